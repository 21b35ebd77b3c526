//! The edge LB model's ICMP errors (docs/edge-lb.md "ICMP errors and the MTU"): a backend-side
//! error about a SNAT'ed packet goes to the client, a client-side error about a reply goes to the
//! backend (rewritten for a SNAT flow, tunnelled unchanged for a DSR flow); anything else passes,
//! counted `icmp_error`. Translation writes no map and no service / backend counter.
use super::icmp;
use super::model::{Expect, Obs};
use super::wire::Pkt;
use super::xdp_lb::{LbModel, Tunnel, XDP_DROP, XDP_PASS};
use abi::lb::{FAMILY_V6, FlowKey, reason as r};

fn key(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src,
        dst,
        sport,
        dport,
        proto,
        _pad: [0; 3],
    }
}

/// A translated error sent on (the FIB never resolves a neighbour in the test namespace).
fn sent(out: (Vec<u8>, Vec<usize>), bytes: u64) -> Expect {
    Expect {
        action: XDP_PASS,
        out: out.0,
        csum: out.1,
        reasons: vec![(r::ICMP_XLATE, bytes), (r::FIB_PASS, 0)],
        ..Default::default()
    }
}

impl LbModel {
    /// Counts a path the model predicted (printed with the run's kinds).
    pub fn path(&mut self, what: &'static str) {
        *self.paths.entry(what).or_default() += 1;
    }

    pub fn icmp_error(&mut self, f: &[u8], p: &Pkt, o: &Obs) -> Expect {
        let bytes = f.len() as u64;
        let pass = || Expect::verdict(XDP_PASS, f, Some((r::ICMP_ERROR, bytes)));
        let Some(q) = icmp::quote(f, p) else {
            return pass();
        };
        let rk = q.reversed();
        let proto = q.key.proto;
        if let Some(e) = self.shadow.snat.get(&rk).copied() {
            let new = key(e.client, e.client_port, e.vip, e.vip_port, proto);
            self.path("icmp to the client");
            return sent(icmp::translate(f, p, &q, &new, &e.vip, &e.client), bytes);
        }
        let Some(c) = self.shadow.ct.get(&rk).copied() else {
            return pass();
        };
        let Some(b) = self.backends.get(&c.backend_id).copied() else {
            return pass();
        };
        let b6 = b.family == FAMILY_V6;
        let Some(lb) = self.lb_addr(b6) else {
            return pass();
        };
        if b.service_id != c.service_id {
            return pass();
        }
        if c.snat_port != 0 {
            if b6 != p.v6 {
                return pass();
            }
            let new = key(b.addr, b.port, lb, c.snat_port, proto);
            self.path("icmp to a SNAT backend");
            return sent(icmp::translate(f, p, &q, &new, &lb, &b.addr), bytes);
        }
        match self.tunnel(f, p, &lb, &b, o, 0) {
            Tunnel::Sent(out) => {
                self.path("icmp tunnelled to a DSR backend");
                sent((out, Vec::new()), bytes)
            }
            Tunnel::TooBig(_) | Tunnel::Oversize => {
                Expect::verdict(XDP_DROP, f, Some((r::TOO_BIG, bytes)))
            }
        }
    }
}
