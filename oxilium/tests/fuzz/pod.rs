//! Model of the pod programs (`oxilium_pod_ingress` / `_egress` on a pod's host-side veth,
//! datapath/src/podlb.rs's module doc, docs/kube-proxy-replacement.md) as a mode of the edge
//! LB's model: a pod's packet to a `SCOPE_INTERNAL` frontend is DNAT'ed (the pod's source kept)
//! to the backend of conntrack or the service's table, or of the pod's fresh ClientIP affinity
//! entry (checked first, on every packet; a flow that does not take it refreshes the entry), its
//! reply entry backend → pod written on every new flow (and affinity hit); the reply is restored
//! at egress. ICMP: a backend's error about what the pod sent goes to the pod (egress), the pod's
//! error about a reply goes to the backend (ingress). Nothing else is touched or counted; the
//! counters are the pod programs' own (`OXI_POD_STATS`) besides the shared ones.
use super::icmp;
use super::model::{Expect, NOW, Obs};
use super::wire::{Frag, Read, read};
use super::xdp_lb::{LbModel, XDP_DROP, XDP_PASS};
use abi::lb::{
    BACKEND_ACTIVE, FAMILY_V6, FlowKey, ServiceKey, ServiceValue, SnatEntry, reason as r,
};
use abi::sock::{AffinityKey, AffinityValue, SCOPE_INTERNAL, SVC_FLAG_AFFINITY, pod};
use std::collections::HashMap;

/// The pod programs' state besides the LB maps.
#[derive(Default)]
pub struct PodConf {
    /// Affinity timeouts (s) by service id, as the agent wrote them.
    pub timeouts: HashMap<u32, u32>,
    /// The shadow of the affinity map.
    pub aff: HashMap<AffinityKey, AffinityValue>,
    /// The packet at hand runs at ingress (leaving the pod).
    pub ingress: bool,
}

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

impl LbModel {
    fn pod_conf(&self) -> &PodConf {
        self.pod.as_ref().unwrap()
    }

    /// The reply entry of a new flow (written whatever was there).
    pub fn pod_reply_entry(
        &self,
        p: &super::wire::Pkt,
        svc: &ServiceValue,
        b: &abi::lb::Backend,
        bid: u32,
    ) -> (FlowKey, Option<SnatEntry>) {
        let rkey = key(b.addr, b.port, p.src, p.sport.to_be(), p.proto);
        let e = SnatEntry {
            client: p.src,
            vip: p.dst,
            client_port: p.sport.to_be(),
            vip_port: p.dport.to_be(),
            service_id: svc.id,
            backend_id: bid,
            flags: 0,
            _pad: 0,
            last_seen_ns: NOW,
        };
        (rkey, Some(e))
    }

    pub fn pod_step(&mut self, f: &[u8], o: &Obs) -> Result<Expect, String> {
        let mut x = self.pod_decide(f, o)?;
        // tc's verdicts: TC_ACT_SHOT, or passed on to the rest of the hook (TCX_NEXT).
        x.action = match x.action {
            XDP_DROP => 2,
            _ => super::np_tc::TCX_NEXT,
        };
        Ok(x)
    }

    fn pod_decide(&mut self, f: &[u8], o: &Obs) -> Result<Expect, String> {
        let ingress = self.pod_conf().ingress;
        let bytes = f.len() as u64;
        let pass = || Ok(Expect::verdict(XDP_PASS, f, None));
        let Read::Ip(p) = read(f) else {
            return pass();
        };
        if icmp::is_error(&p) {
            return Ok(self.pod_icmp(f, &p));
        }
        if p.frag != Frag::No || (p.proto != 6 && p.proto != 17) {
            return pass();
        }
        if !ingress {
            let k = p.key();
            if !self.shadow.snat.contains_key(&k) {
                return pass();
            }
            let mut x = self.reply(f, &p, k);
            x.reasons.clear();
            x.np.push((pod::reason::REPLY, bytes));
            return Ok(x);
        }
        let skey = ServiceKey {
            addr: p.dst,
            port: p.dport.to_be(),
            proto: p.proto,
            scope: SCOPE_INTERNAL,
        };
        let Some(svc) = self.services.get(&skey).copied() else {
            return pass();
        };
        if svc.flags & SVC_FLAG_AFFINITY != 0 {
            let akey = pod::affinity_key(&p.src, svc.id);
            let t = self.pod_conf().timeouts.get(&svc.id).copied().unwrap_or(0);
            if let Some(a) = self.pod_conf().aff.get(&akey).copied()
                && let Some(b) = self.backends.get(&a.backend_id).copied()
                && b.service_id == svc.id
                && b.state == BACKEND_ACTIVE
            {
                let idle = |at: u64| at.saturating_sub(a.last_used_ns);
                let fresh = idle(o.t0) < t as u64 * super::ct::NS;
                if fresh != (idle(o.t1) < t as u64 * super::ct::NS) {
                    self.ambiguous += 1;
                }
                if fresh {
                    self.path("pod affinity hit");
                    let mut x = Expect::default();
                    let v = AffinityValue {
                        last_used_ns: NOW,
                        ..a
                    };
                    x.aff.push((akey, Some(v)));
                    x.snat
                        .push(self.pod_reply_entry(&p, &svc, &b, a.backend_id));
                    x.np.push((pod::reason::AFFINITY_HIT, bytes));
                    return Ok(self.pod_forward(x, f, &p, &svc, a.backend_id));
                }
            }
        }
        let mut x = self.forward(f, &p, &svc, o)?;
        if x.reasons.iter().any(|&(why, _)| why == r::NO_BACKEND) {
            x.np.push((pod::reason::NO_BACKEND, bytes));
        }
        Ok(x)
    }

    /// After the backend is chosen (`x` holds the entries so far): the affinity entry of a flow
    /// not served from it remembered, the family checked, DNAT keeping the pod's source.
    pub fn pod_forward(
        &mut self,
        mut x: Expect,
        f: &[u8],
        p: &super::wire::Pkt,
        svc: &ServiceValue,
        bid: u32,
    ) -> Expect {
        let bytes = f.len() as u64;
        let b = self.backends[&bid];
        let hit = x.np.iter().any(|&(w, _)| w == pod::reason::AFFINITY_HIT);
        let t = self.pod_conf().timeouts.get(&svc.id).copied().unwrap_or(0);
        if !hit && svc.flags & SVC_FLAG_AFFINITY != 0 && t != 0 {
            let v = AffinityValue {
                backend_id: bid,
                _pad: 0,
                last_used_ns: NOW,
            };
            x.aff.push((pod::affinity_key(&p.src, svc.id), Some(v)));
        }
        if (b.family == FAMILY_V6) != p.v6 {
            self.path("pod family");
            x.np.push((pod::reason::FAMILY, bytes));
            return self.drop_keep(x, f, u32::MAX);
        }
        x.service = Some((svc.id, bytes));
        x.backend = Some((bid, bytes));
        let (out, csum) = self.rw(f, p, &p.src, &b.addr, p.sport, u16::from_be(b.port));
        x.out = out;
        x.csum = csum;
        x.action = XDP_PASS;
        x.np.push((pod::reason::FORWARD, bytes));
        x
    }

    /// ICMP errors on the pod path (datapath/src/icmp/skb.rs `from_pod`, `to_pod`'s
    /// `backend_side`): translated ones counted `icmp_translated`, the rest untouched and
    /// uncounted.
    fn pod_icmp(&mut self, f: &[u8], p: &super::wire::Pkt) -> Expect {
        let bytes = f.len() as u64;
        let pass = Expect::verdict(XDP_PASS, f, None);
        let Some(q) = icmp::quote(f, p) else {
            return pass;
        };
        let rk = q.reversed();
        let proto = q.key.proto;
        let (out, csum) = if self.pod_conf().ingress {
            let Some(c) = self.shadow.ct.get(&rk).copied() else {
                return pass;
            };
            let Some(b) = self.backends.get(&c.backend_id).copied() else {
                return pass;
            };
            if b.service_id != c.service_id || c.snat_port != 0 || (b.family == FAMILY_V6) != p.v6 {
                return pass;
            }
            self.path("pod icmp to the backend");
            let new = key(b.addr, b.port, q.key.dst, q.key.dport, proto);
            icmp::translate(f, p, &q, &new, &p.src, &b.addr)
        } else {
            let Some(e) = self.shadow.snat.get(&rk).copied() else {
                return pass;
            };
            self.path("pod icmp to the pod");
            let new = key(e.client, e.client_port, e.vip, e.vip_port, proto);
            icmp::translate(f, p, &q, &new, &e.vip, &e.client)
        };
        Expect {
            action: XDP_PASS,
            out,
            csum,
            reasons: vec![(r::ICMP_XLATE, bytes)],
            ..Default::default()
        }
    }
}
