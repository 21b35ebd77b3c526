//! Model of the NodePort tc programs (`oxilium_nodeport_ingress` / `_egress`, docs/nodeport.md,
//! datapath/src/nodeport.rs's module doc) as a mode of the edge LB's model: the XDP
//! acceleration's decisions plus what only tc does: a pod of this node gets the flow DNAT'ed
//! (client kept) and redirected to its veth; a remote backend's reply is restored at ingress and
//! a pod's at egress; ICMP errors translated at both hooks (a client's error about a pod's reply
//! is DNAT'ed to the pod, one about a DSR flow tunnelled with the backend port); fragments and
//! other protocols are counted at ingress only. Checksums through the skb helpers: any UDP
//! checksum of 0 stays 0. In BPF_PROG_TEST_RUN a VLAN tag stays in the data, so the skb's
//! protocol is the tag's and bpf_skb_adjust_room refuses to encapsulate (NodePort `error`).
//! The runs carry no ingress device, so the DSR MTU check's FIB lookup never answers (the MTU is
//! the XDP runs' and nodeport_mtu.rs's).
use super::icmp;
use super::model::{Expect, Obs, encapsulate};
use super::wire::{Frag, Pkt, Read, mapped4, read};
use super::xdp_lb::{LbModel, TC_REDIRECT, XDP_DROP, XDP_PASS, skey};
use abi::lb::{Backend, FAMILY_V6, FlowKey, reason as r};
use abi::nodeport::reason as np;

/// TCX_NEXT (-1): the tc programs let a packet through to the rest of the hook.
pub const TCX_NEXT: u32 = u32::MAX;
pub const TC_ACT_SHOT: u32 = 2;

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

/// The XDP-valued verdicts of the shared model code as tc's.
fn tc_action(a: u32) -> u32 {
    match a {
        XDP_DROP => TC_ACT_SHOT,
        XDP_PASS => TCX_NEXT,
        other => other,
    }
}

impl LbModel {
    pub fn tc_step(&mut self, f: &[u8], o: &Obs) -> Result<Expect, String> {
        let mut x = self.tc_decide(f, o)?;
        x.action = tc_action(x.action);
        Ok(x)
    }

    fn tc_decide(&mut self, f: &[u8], o: &Obs) -> Result<Expect, String> {
        let ingress = self.tc == Some(true);
        let bytes = f.len() as u64;
        let pass = |why: u32| {
            Ok(Expect::verdict(
                XDP_PASS,
                f,
                ingress.then_some((why, bytes)),
            ))
        };
        let p = match read(f) {
            Read::NotIp => return Ok(Expect::verdict(XDP_PASS, f, None)),
            Read::Malformed => return pass(r::MALFORMED),
            Read::Ip(p) => p,
        };
        if icmp::is_error(&p) {
            return Ok(self.tc_icmp(f, &p));
        }
        if p.frag != Frag::No {
            return pass(r::PASS);
        }
        if ingress && (p.proto == 4 || p.proto == 41) {
            return self.tc_tunnel(f, &p);
        }
        if p.proto != 6 && p.proto != 17 {
            return pass(r::PASS);
        }
        if ingress && let Some(svc) = self.services.get(&skey(p.dst, p.dport, p.proto)).copied() {
            return self.forward(f, &p, &svc, o);
        }
        let k = p.key();
        if self.shadow.snat.contains_key(&k) {
            let mut x = self.reply(f, &p, k);
            if ingress {
                x.np.push((np::REV_SNAT, bytes));
            } else {
                x.reasons.clear();
                x.np.push((np::REV_DNAT, bytes));
            }
            if x.service.is_some_and(|s| s.0 == 0) {
                x.service = None;
            }
            return Ok(x);
        }
        if ingress {
            return pass(r::PASS);
        }
        Ok(Expect::verdict(XDP_PASS, f, None))
    }

    /// A tunnel at ingress: to a pod of this node with a port, the DSR receiver (not modelled:
    /// no generator makes one, and a mutation hardly could); anything else passes.
    fn tc_tunnel(&mut self, f: &[u8], p: &Pkt) -> Result<Expect, String> {
        let bytes = f.len() as u64;
        let pass = Ok(Expect::verdict(XDP_PASS, f, Some((r::PASS, bytes))));
        let local = self
            .np
            .as_ref()
            .is_some_and(|c| c.endpoints.contains_key(&p.dst));
        let l3 = p.l3_off;
        let port = if p.v6 {
            u16::from_be_bytes([f[l3 + 2], f[l3 + 3]])
        } else if f[l3] == 0x46 && f.len() >= l3 + 24 && f[l3 + 20..l3 + 22] == [0x9e, 4] {
            u16::from_be_bytes([f[l3 + 22], f[l3 + 23]])
        } else {
            0
        };
        if !local || port == 0 {
            return pass;
        }
        let backend_v6 = p.dst[..12] != mapped4(&[0; 4])[..12];
        if (p.proto == 41) != backend_v6 {
            let mut x = Expect::verdict(XDP_DROP, f, None);
            x.np.push((np::FAMILY, bytes));
            return Ok(x);
        }
        Err("a tunnel carrying a port to a pod of this node: the model has no DSR receiver".into())
    }

    /// DSR at tc: the packet in an outer header node → backend carrying the backend port.
    pub fn tc_dsr(
        &self,
        mut x: Expect,
        f: &[u8],
        p: &Pkt,
        node: &[u8; 16],
        b: &Backend,
        port: u16,
    ) -> Expect {
        let bytes = f.len() as u64;
        if p.vlan {
            x.np.push((np::ERROR, bytes));
            return self.drop_keep(x, f, u32::MAX);
        }
        x.out = encapsulate(f, p, node, &b.addr, p.ip_id, port);
        x.action = XDP_PASS;
        x.reasons.extend([(r::FWD_DSR, bytes), (r::FIB_PASS, 0)]);
        self.np_sent(&mut x, np::DSR, bytes);
        x
    }

    /// ICMP errors at tc (datapath/src/icmp/skb.rs): ingress translates both sides, egress only
    /// a pod's error about a packet DNAT'ed to it; what is not translated passes (counted
    /// `icmp_error` at ingress only).
    fn tc_icmp(&mut self, f: &[u8], p: &Pkt) -> Expect {
        let ingress = self.tc == Some(true);
        let bytes = f.len() as u64;
        let pass = || Expect::verdict(XDP_PASS, f, ingress.then_some((r::ICMP_ERROR, bytes)));
        let sent = |out: (Vec<u8>, Vec<usize>), action: u32, fib: bool| {
            let mut reasons = vec![(r::ICMP_XLATE, bytes)];
            if fib {
                reasons.push((r::FIB_PASS, 0));
            }
            Expect {
                action,
                out: out.0,
                csum: out.1,
                reasons,
                ..Default::default()
            }
        };
        let Some(q) = icmp::quote(f, p) else {
            return pass();
        };
        let rk = q.reversed();
        let proto = q.key.proto;
        if let Some(e) = self.shadow.snat.get(&rk).copied() {
            let new = key(e.client, e.client_port, e.vip, e.vip_port, proto);
            self.path("tc icmp to the client");
            let out = icmp::translate(f, p, &q, &new, &e.vip, &e.client);
            return sent(out, XDP_PASS, ingress);
        }
        if !ingress {
            return pass();
        }
        let Some(c) = self.shadow.ct.get(&rk).copied() else {
            return pass();
        };
        let Some(b) = self.backends.get(&c.backend_id).copied() else {
            return pass();
        };
        if b.service_id != c.service_id || (b.family == FAMILY_V6) != p.v6 {
            return pass();
        }
        let Some(node) = self.lb_addr(p.v6) else {
            return pass();
        };
        let local = self
            .np
            .as_ref()
            .and_then(|n| n.endpoints.get(&b.addr).copied());
        if c.snat_port != 0 {
            let new = key(b.addr, b.port, node, c.snat_port, proto);
            self.path("tc icmp to a SNAT backend");
            return sent(
                icmp::translate(f, p, &q, &new, &node, &b.addr),
                XDP_PASS,
                true,
            );
        }
        if let Some((mac, node_mac)) = local {
            let new = key(b.addr, b.port, q.key.dst, q.key.dport, proto);
            self.path("tc icmp to a pod of this node");
            let (mut out, csum) = icmp::translate(f, p, &q, &new, &p.src, &b.addr);
            out[..6].copy_from_slice(&mac);
            out[6..12].copy_from_slice(&node_mac);
            return sent((out, csum), TC_REDIRECT, false);
        }
        if p.vlan {
            return Expect::verdict(XDP_DROP, f, None);
        }
        self.path("tc icmp tunnelled to a DSR backend");
        let out = encapsulate(f, p, &node, &b.addr, p.ip_id, u16::from_be(b.port));
        sent((out, Vec::new()), XDP_PASS, true)
    }
}
