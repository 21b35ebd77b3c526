//! Model of `oxilium_nodeport_xdp`, the XDP acceleration of NodePort (docs/nodeport.md, the
//! module doc of xdp/src/nodeport.rs), as a mode of the edge LB's model: the same conntrack,
//! selection, SNAT ports, rewrite and DSR, with NodePort's decisions on a new flow
//! (loadBalancerSourceRanges, a pod of this node: DNAT only and a reply entry, remote: SNAT or
//! DSR carrying the backend port) and its own counters. Everything it leaves to the tc program
//! passes untouched and uncounted: non-IP and malformed frames, ICMP errors, fragments, other
//! protocols, services with ClientIP affinity, flows to pods of this node (after their entries
//! are made), a backend of the other family (dropped, `family`), traffic for no frontend.
use super::model::{Expect, NOW, Obs};
use super::traffic::to_ip;
use super::wire::{Frag, Pkt, Read, read};
use super::xdp_lb::{LbModel, XDP_DROP, XDP_PASS, skey};
use abi::lb::{Backend, FlowKey, MODE_DSR, MODE_SNAT, ServiceValue, SnatEntry};
use abi::nodeport::reason as np;
use lb::model::IpNetwork;
use std::collections::HashMap;

/// What the NodePort maps say (as the agent wrote them).
#[derive(Default)]
pub struct NpConf {
    /// Pods of this node: their MAC and the node side's.
    pub endpoints: HashMap<[u8; 16], ([u8; 6], [u8; 6])>,
    /// loadBalancerSourceRanges by service id (absent or empty: open to all).
    pub ranges: HashMap<u32, Vec<IpNetwork>>,
}

/// The decision on a new flow once its backend is chosen.
pub enum NewFlow {
    Snat,
    /// No SNAT port; with the reply entry a pod of this node needs.
    Keep(Option<(FlowKey, Option<SnatEntry>)>),
    Refuse,
}

impl LbModel {
    /// The edge LB: SNAT or DSR as the service says. NodePort: source ranges first, then a pod
    /// of this node (DNAT only, its reply entry backend → client written unless one for this
    /// frontend is there), else SNAT or DSR.
    pub fn new_flow(&self, p: &Pkt, svc: &ServiceValue, b: &Backend, bid: u32) -> NewFlow {
        if self.pod.is_some() {
            return NewFlow::Keep(Some(self.pod_reply_entry(p, svc, b, bid)));
        }
        let Some(c) = &self.np else {
            return if svc.mode == MODE_SNAT {
                NewFlow::Snat
            } else {
                NewFlow::Keep(None)
            };
        };
        if let Some(r) = c.ranges.get(&svc.id)
            && !r.is_empty()
            && !r.iter().any(|n| n.contains(to_ip(&p.src)))
        {
            return NewFlow::Refuse;
        }
        if !c.endpoints.contains_key(&b.addr) {
            return if svc.mode == MODE_DSR {
                NewFlow::Keep(None)
            } else {
                NewFlow::Snat
            };
        }
        let rkey = FlowKey {
            src: b.addr,
            dst: p.src,
            sport: b.port,
            dport: p.sport.to_be(),
            proto: p.proto,
            _pad: [0; 3],
        };
        if let Some(e) = self.shadow.snat.get(&rkey)
            && e.vip == p.dst
            && e.vip_port == p.dport.to_be()
        {
            return NewFlow::Keep(None);
        }
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
        NewFlow::Keep(Some((rkey, Some(e))))
    }

    /// NodePort's counters of a packet the acceleration sent on (`what`: remote or dsr).
    pub fn np_sent(&self, x: &mut Expect, what: u32, bytes: u64) {
        if self.np.is_some() {
            x.np.push((what, bytes));
            if self.tc.is_none() {
                x.np.push((np::XDP, bytes));
            }
        }
    }

    pub fn np_step(&mut self, f: &[u8], o: &Obs) -> Result<Expect, String> {
        let bytes = f.len() as u64;
        let pass = || Ok(Expect::verdict(XDP_PASS, f, None));
        let Read::Ip(p) = read(f) else {
            return pass();
        };
        if super::icmp::is_error(&p) || p.frag != Frag::No || (p.proto != 6 && p.proto != 17) {
            return pass();
        }
        if let Some(svc) = self.services.get(&skey(p.dst, p.dport, p.proto)).copied() {
            if svc.flags & abi::sock::SVC_FLAG_AFFINITY != 0 {
                return pass();
            }
            return self.forward(f, &p, &svc, o);
        }
        let key = p.key();
        if self.shadow.snat.contains_key(&key) {
            let mut x = self.reply(f, &p, key);
            if x.action != XDP_DROP {
                x.np.extend([(np::REV_SNAT, bytes), (np::XDP, bytes)]);
            }
            return Ok(x);
        }
        pass()
    }
}
