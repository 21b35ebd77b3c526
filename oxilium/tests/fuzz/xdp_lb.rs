//! Model of `oxilium_lb`, the edge LB's XDP program, from docs/edge-lb.md ("What the datapath
//! does with a packet", "Forwarding modes", "Packet edge cases", "Conntrack", "SNAT ports"):
//! parse, ICMP errors, non-TCP/UDP, fragments to a VIP, service lookup, conntrack (state,
//! timeouts, restart), Maglev (flow_hash % M over the service's table) or random (any slot),
//! SNAT port allocation (set-valued: in range, free or held by a finished flow), SNAT rewrite,
//! DSR encapsulation, reverse SNAT of replies. In the test's fresh network namespace the FIB has
//! no route, so every translated packet goes up the stack (XDP_PASS, `fib_pass`).
use super::ct;
use super::model::{Expect, NOW, Obs, Shadow, encapsulate, rewrite};
use super::np_xdp::NewFlow;
use super::wire::{Frag, Pkt, Read, read};
use abi::lb::{
    ALG_RANDOM, Backend, CtEntry, FAMILY_V6, FlowKey, LbConfig, MODE_DSR, MODE_SNAT,
    SCOPE_EXTERNAL, ServiceKey, ServiceValue, SnatEntry, flow_hash, reason as r,
};
use abi::nodeport::reason as np;
use std::collections::HashMap;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
/// tc's TC_ACT_REDIRECT (bpf_redirect's return), used as is by the NodePort tc model.
pub const TC_REDIRECT: u32 = 7;

/// The configuration the program reads (as the agent wrote it) and the model's shadow.
pub struct LbModel {
    pub services: HashMap<ServiceKey, ServiceValue>,
    pub backends: HashMap<u32, Backend>,
    pub tables: HashMap<u32, Vec<u32>>,
    pub cfg: LbConfig,
    pub shadow: Shadow,
    /// Packets whose expiry decision fell inside the run's time window (either is right).
    pub ambiguous: u64,
    /// The MTU of the routes towards the backends (IPv4, IPv6) in the program's namespace.
    pub route_mtu: (u32, u32),
    /// The pod programs' mode and state (None: another program).
    pub pod: Option<super::pod::PodConf>,
    /// NodePort at tc: Some(true) at ingress, Some(false) at egress (None: XDP).
    pub tc: Option<bool>,
    /// The XDP NodePort acceleration's own configuration (None: the edge LB).
    pub np: Option<super::np_xdp::NpConf>,
    /// How often each translation path was predicted.
    pub paths: std::collections::BTreeMap<&'static str, u64>,
}

/// What DSR encapsulation towards a backend comes to.
pub enum Tunnel {
    Sent(Vec<u8>),
    /// Over the route's MTU: the usable MTU.
    TooBig(u16),
    /// Over 64 KiB once encapsulated.
    Oversize,
}

pub fn skey(addr: [u8; 16], port: u16, proto: u8) -> ServiceKey {
    ServiceKey {
        addr,
        port: port.to_be(),
        proto,
        scope: SCOPE_EXTERNAL,
    }
}

impl LbModel {
    fn ready(&self) -> bool {
        self.cfg.ready == 1
    }

    pub fn lb_addr(&self, v6: bool) -> Option<[u8; 16]> {
        let a = if v6 {
            self.cfg.snat_v6
        } else {
            self.cfg.snat_v4
        };
        (self.ready() && a != [0; 16]).then_some(a)
    }

    pub fn is_vip(&self, a: &[u8; 16]) -> bool {
        self.services.contains_key(&skey(*a, 0, 0))
    }

    /// Idle time at the run (the window's start; a decision that flips inside the window is
    /// counted in `ambiguous`).
    fn expired(&mut self, o: &Obs, last: u64, flags: u16, proto: u8, svc_s: u32) -> bool {
        let t = self.cfg.timeouts;
        let a = ct::expired(flags, proto, o.t0.saturating_sub(last), &t, svc_s);
        if a != ct::expired(flags, proto, o.t1.saturating_sub(last), &t, svc_s) {
            self.ambiguous += 1;
        }
        a
    }

    pub fn step(&mut self, f: &[u8], o: &Obs) -> Result<Expect, String> {
        if self.pod.is_some() {
            return self.pod_step(f, o);
        }
        if self.tc.is_some() {
            return self.tc_step(f, o);
        }
        if self.np.is_some() {
            return self.np_step(f, o);
        }
        let bytes = f.len() as u64;
        let p = match read(f) {
            Read::NotIp => return Ok(Expect::verdict(XDP_PASS, f, None)),
            Read::Malformed => {
                return Ok(Expect::verdict(XDP_PASS, f, Some((r::MALFORMED, bytes))));
            }
            Read::Ip(p) => p,
        };
        if super::icmp::is_error(&p) {
            return Ok(self.icmp_error(f, &p, o));
        }
        if p.proto != 6 && p.proto != 17 {
            return Ok(Expect::verdict(XDP_PASS, f, Some((r::PASS, bytes))));
        }
        if p.frag != Frag::No {
            if self.is_vip(&p.dst) {
                return Ok(Expect::verdict(XDP_DROP, f, Some((r::FRAGMENT, bytes))));
            }
            return Ok(Expect::verdict(XDP_PASS, f, Some((r::PASS, bytes))));
        }
        if let Some(svc) = self.services.get(&skey(p.dst, p.dport, p.proto)).copied() {
            return self.forward(f, &p, &svc, o);
        }
        let key = p.key();
        if self.shadow.snat.contains_key(&key) {
            return Ok(self.reply(f, &p, key));
        }
        Ok(Expect::verdict(XDP_PASS, f, Some((r::PASS, bytes))))
    }

    /// The live conntrack entry of the flow, if it still pins a backend of the service.
    fn live(&mut self, p: &Pkt, svc: &ServiceValue, o: &Obs) -> Option<CtEntry> {
        let e = *self.shadow.ct.get(&p.key())?;
        let exp = self.expired(o, e.last_seen_ns, e.flags, p.proto, svc.ct_timeout_s);
        if e.service_id != svc.id || exp || ct::restarts(e.flags, p.proto, p.tcp_flags) {
            return None;
        }
        let b = self.backends.get(&e.backend_id)?;
        (b.service_id == svc.id).then_some(e)
    }

    pub fn forward(
        &mut self,
        f: &[u8],
        p: &Pkt,
        svc: &ServiceValue,
        o: &Obs,
    ) -> Result<Expect, String> {
        let bytes = f.len() as u64;
        let key = p.key();
        let mut x = Expect::default();
        let (bid, port) = if let Some(mut e) = self.live(p, svc, o) {
            e.last_seen_ns = NOW;
            e.packets += 1;
            e.bytes += bytes;
            e.svc_timeout_s = svc.ct_timeout_s;
            let flags = ct::step(e.flags, p.proto, p.tcp_flags, false);
            if flags != e.flags && e.snat_port != 0 {
                let b = self.backends[&e.backend_id];
                let rkey = self.rkey(p, &b, e.snat_port);
                if let Some(mut s) = self.shadow.snat.get(&rkey).copied() {
                    s.flags = flags;
                    x.snat.push((rkey, Some(s)));
                }
            }
            e.flags = flags;
            x.ct.push((key, Some(e)));
            (e.backend_id, e.snat_port)
        } else {
            if svc.table_size == 0 {
                return Ok(Expect::verdict(XDP_DROP, f, Some((r::NO_BACKEND, bytes))));
            }
            let table = self.tables.get(&svc.id).cloned().unwrap_or_default();
            let id = if svc.algorithm == ALG_RANDOM {
                // Any slot: the kernel's pick is read back from its conntrack entry.
                match o.ct {
                    Some(c) if table.contains(&c.backend_id) => c.backend_id,
                    Some(c) => {
                        return Err(format!("random backend {} not in the table", c.backend_id));
                    }
                    None if table.is_empty() => {
                        return Ok(Expect::verdict(XDP_DROP, f, Some((r::NO_BACKEND, bytes))));
                    }
                    // Dropped before an entry was made: judge with the busiest backend.
                    None => self.busiest(p, &table, o),
                }
            } else {
                if table.is_empty() {
                    return Ok(Expect::verdict(XDP_DROP, f, Some((r::NO_BACKEND, bytes))));
                }
                table[(flow_hash(&key, 0) % table.len() as u32) as usize]
            };
            let Some(b) = self.backends.get(&id).copied() else {
                return Ok(Expect::verdict(XDP_DROP, f, Some((r::NO_BACKEND, bytes))));
            };
            let flags = ct::step(abi::ct::NEW, p.proto, p.tcp_flags, false);
            let mut port = 0;
            match self.new_flow(p, svc, &b, id) {
                NewFlow::Refuse => {
                    self.path("np source range refused");
                    let mut e = Expect::verdict(XDP_DROP, f, None);
                    e.np.push((np::SOURCE_RANGE, bytes));
                    e.ct.push((key, self.shadow.ct.get(&key).copied()));
                    return Ok(e);
                }
                NewFlow::Keep(reply) => {
                    if reply.is_some() {
                        self.path("np reply entry of a pod");
                    }
                    x.snat.extend(reply)
                }
                NewFlow::Snat => match self.snat_port(p, &b, id, svc.id, flags, o)? {
                    Ok((pt, s, reuse)) => {
                        port = pt;
                        x.snat.push((self.rkey(p, &b, pt), Some(s)));
                        if reuse {
                            x.reasons.push((r::SNAT_REUSE, 0));
                        }
                    }
                    Err(reason) => {
                        let mut e = Expect::verdict(XDP_DROP, f, Some((reason, bytes)));
                        e.ct.push((key, self.shadow.ct.get(&key).copied()));
                        return Ok(e);
                    }
                },
            }
            let e = CtEntry {
                backend_id: id,
                service_id: svc.id,
                last_seen_ns: NOW,
                packets: 1,
                bytes,
                snat_port: port,
                flags,
                svc_timeout_s: svc.ct_timeout_s,
            };
            x.ct.push((key, Some(e)));
            x.reasons.push((r::CT_NEW, 0));
            (id, port)
        };
        let b = self.backends[&bid];
        if self.pod.is_some() {
            return Ok(self.pod_forward(x, f, p, svc, bid));
        }
        if let Some(np) = &self.np {
            if (b.family == FAMILY_V6) != p.v6 {
                self.paths
                    .entry("np family")
                    .and_modify(|n| *n += 1)
                    .or_insert(1);
                x.np.push((np::FAMILY, bytes));
                return Ok(self.drop_keep(x, f, u32::MAX));
            }
            if let Some(&(mac, node_mac)) = np.endpoints.get(&b.addr) {
                *self.paths.entry("np pod of this node").or_default() += 1;
                if self.tc.is_some() {
                    // tc: DNAT (the client kept), delivered to the pod's veth.
                    x.service = Some((svc.id, bytes));
                    x.backend = Some((bid, bytes));
                    let (mut out, csum) =
                        self.rw(f, p, &p.src, &b.addr, p.sport, u16::from_be(b.port));
                    out[..6].copy_from_slice(&mac);
                    out[6..12].copy_from_slice(&node_mac);
                    x.out = out;
                    x.csum = csum;
                    x.action = TC_REDIRECT;
                    x.np.push((np::LOCAL, bytes));
                    return Ok(x);
                }
                // XDP: the tc program's (entries made here).
                x.action = XDP_PASS;
                x.out = f.to_vec();
                return Ok(x);
            }
        }
        if self.tc.is_some() {
            // tc counts the service before it looks for the node address.
            x.service = Some((svc.id, bytes));
            x.backend = Some((bid, bytes));
        }
        let Some(lb) = self.lb_addr(b.family == FAMILY_V6) else {
            return Ok(self.drop_keep(x, f, r::ERROR));
        };
        x.service = Some((svc.id, bytes));
        x.backend = Some((bid, bytes));
        if port == 0 {
            if svc.mode != MODE_DSR {
                return Ok(self.drop_keep(x, f, r::NO_BACKEND));
            }
            // NodePort DSR carries the backend port to the receiving node.
            let dport = if self.np.is_some() {
                u16::from_be(b.port)
            } else {
                0
            };
            if self.tc.is_some() {
                return Ok(self.tc_dsr(x, f, p, &lb, &b, dport));
            }
            let t = self.tunnel(f, p, &lb, &b, o, dport);
            return Ok(match t {
                Tunnel::Sent(out) => {
                    x.out = out;
                    x.action = XDP_PASS;
                    x.reasons.extend([(r::FWD_DSR, bytes), (r::FIB_PASS, 0)]);
                    self.np_sent(&mut x, np::DSR, bytes);
                    x
                }
                Tunnel::TooBig(mtu) if p.v6 || p.df => {
                    self.path("too-big answer");
                    x.out = super::icmp::too_big(f, p, mtu);
                    x.action = XDP_TX;
                    x.reasons.push((r::ICMP_TOO_BIG, bytes));
                    self.np_sent(&mut x, np::DSR, bytes);
                    x
                }
                Tunnel::TooBig(_) | Tunnel::Oversize => self.drop_keep(x, f, r::TOO_BIG),
            });
        }
        let (out, csum) = self.rw(f, p, &lb, &b.addr, u16::from_be(port), u16::from_be(b.port));
        x.out = out;
        x.csum = csum;
        x.action = XDP_PASS;
        x.reasons.extend([(r::FWD_SNAT, bytes), (r::FIB_PASS, 0)]);
        self.np_sent(&mut x, np::REMOTE, bytes);
        Ok(x)
    }

    /// DSR: the packet in an outer header LB → backend, unless it exceeds the route's MTU. The
    /// outer IPv4 identification around an IPv6 packet is random: read from the output.
    pub fn tunnel(
        &self,
        f: &[u8],
        p: &Pkt,
        lb: &[u8; 16],
        b: &Backend,
        o: &Obs,
        port: u16,
    ) -> Tunnel {
        let b6 = b.family == FAMILY_V6;
        let id = if p.v6 && !b6 {
            let at = p.l3_off + 4;
            o.out
                .get(at..at + 2)
                .map_or(0, |s| u16::from_be_bytes([s[0], s[1]]))
        } else {
            p.ip_id
        };
        let hlen = match (b6, port) {
            (true, _) => 40,
            (false, 0) => 20,
            _ => 24,
        };
        if p.l3_len + hlen > 0xffff {
            return Tunnel::Oversize;
        }
        let route = if b6 {
            self.route_mtu.1
        } else {
            self.route_mtu.0
        };
        if (p.l3_len + hlen) as u32 > route {
            return Tunnel::TooBig(super::icmp::usable(route, b6, port != 0));
        }
        Tunnel::Sent(encapsulate(f, p, lb, &b.addr, id, port))
    }

    fn busiest(&mut self, p: &Pkt, table: &[u32], o: &Obs) -> u32 {
        let (min, max) = (self.cfg.snat_port_min, self.cfg.snat_port_max);
        let mut best = (0, table[0]);
        for &id in table {
            let Some(b) = self.backends.get(&id).copied() else {
                continue;
            };
            let live = (min..=max)
                .filter(|&pt| !self.free(p, &b, pt.to_be(), o).0)
                .count();
            if live > best.0 {
                best = (live, id);
            }
        }
        best.1
    }

    /// The rewrite of a translated packet (the skb helpers' UDP rule at tc).
    pub fn rw(
        &self,
        f: &[u8],
        p: &Pkt,
        src: &[u8; 16],
        dst: &[u8; 16],
        sport: u16,
        dport: u16,
    ) -> (Vec<u8>, Vec<usize>) {
        rewrite(f, p, src, dst, sport, dport, self.tc.is_some())
    }

    /// `x` turned into a drop of `f` counted `reason` (`u32::MAX`: no LB counter).
    pub fn drop_keep(&self, mut x: Expect, f: &[u8], reason: u32) -> Expect {
        x.action = XDP_DROP;
        x.out = f.to_vec();
        x.csum.clear();
        if reason != u32::MAX {
            x.reasons.push((reason, f.len() as u64));
        }
        x
    }

    /// The reply key of a SNAT'ed flow: backend → LB address of the flow's family.
    fn rkey(&self, p: &Pkt, b: &Backend, port: u16) -> FlowKey {
        let lb = if p.v6 {
            self.cfg.snat_v6
        } else {
            self.cfg.snat_v4
        };
        FlowKey {
            src: b.addr,
            dst: lb,
            sport: b.port,
            dport: port,
            proto: p.proto,
            _pad: [0; 3],
        }
    }

    /// The SNAT port the kernel chose (read from its conntrack entry) checked against the rules:
    /// in the range; its `OXI_SNAT` slot free, this flow's own, or held by a flow that is done
    /// (then counted `snat_reuse`). Exhaustion is accepted only when sixteen random candidates
    /// could plausibly all have hit live flows. Returns (port, new SNAT entry, reused) or the
    /// drop reason.
    #[allow(clippy::type_complexity)]
    fn snat_port(
        &mut self,
        p: &Pkt,
        b: &Backend,
        bid: u32,
        sid: u32,
        flags: u16,
        o: &Obs,
    ) -> Result<Result<(u16, SnatEntry, bool), u32>, String> {
        let c = self.cfg;
        let lb = if p.v6 { c.snat_v6 } else { c.snat_v4 };
        let (min, max) = (c.snat_port_min, c.snat_port_max);
        if !self.ready() || lb == [0; 16] || min == 0 || max < min {
            return Ok(Err(r::ERROR));
        }
        let entry = SnatEntry {
            client: p.src,
            vip: p.dst,
            client_port: p.sport.to_be(),
            vip_port: p.dport.to_be(),
            service_id: sid,
            backend_id: bid,
            flags,
            _pad: 0,
            last_seen_ns: NOW,
        };
        if o.reasons[r::SNAT_EXHAUSTED as usize] > 0 {
            let range = (max - min) as u64 + 1;
            let live = (min..=max)
                .filter(|&pt| {
                    self.is_frontend(lb, pt, p.proto) || !self.free(p, b, pt.to_be(), o).0
                })
                .count() as f64;
            let chance = (live / range as f64).powi(16);
            return if chance > 1e-9 {
                Ok(Err(r::SNAT_EXHAUSTED))
            } else {
                Err(format!("snat_exhausted with {live} of {range} ports live"))
            };
        }
        let Some(cte) = o.ct else {
            return Err("new SNAT flow without a conntrack entry".into());
        };
        let port = cte.snat_port;
        let h = u16::from_be(port);
        if h < min || h > max {
            return Err(format!("SNAT port {h} outside {min}-{max}"));
        }
        if self.is_frontend(lb, h, p.proto) {
            return Err(format!("SNAT port {h} is a frontend on the SNAT address"));
        }
        let (free, reuse) = self.free(p, b, port, o);
        if !free {
            return Err(format!("SNAT port {h} taken from a live flow"));
        }
        Ok(Ok((port, entry, reuse)))
    }

    /// Whether `port` (host order) on the SNAT address `lb` is a service frontend for `proto`:
    /// never a SNAT port (the backend's replies would be taken for new flows to it).
    fn is_frontend(&self, lb: [u8; 16], port: u16, proto: u8) -> bool {
        self.services.contains_key(&skey(lb, port, proto))
    }

    /// Whether SNAT port `port` towards `b` may go to the flow `p`: (allowed, taken over from
    /// another flow). A port still held by this same client flow (its conntrack entry closed or
    /// evicted) is judged like any other (its old connection may still be in the backend's
    /// TIME_WAIT), but is no take-over.
    fn free(&mut self, p: &Pkt, b: &Backend, port: u16, o: &Obs) -> (bool, bool) {
        let Some(e) = self.shadow.snat.get(&self.rkey(p, b, port)).copied() else {
            return (true, false);
        };
        let ours = e.client == p.src
            && e.client_port == p.sport.to_be()
            && e.vip == p.dst
            && e.vip_port == p.dport.to_be();
        let okey = FlowKey {
            src: e.client,
            dst: e.vip,
            sport: e.client_port,
            dport: e.vip_port,
            proto: p.proto,
            _pad: [0; 3],
        };
        let t = self.cfg.timeouts;
        let gone = match self.shadow.ct.get(&okey) {
            Some(c) if c.snat_port == port && c.backend_id == e.backend_id => {
                let last = c.last_seen_ns.max(e.last_seen_ns);
                let a = ct::reusable(
                    c.flags,
                    p.proto,
                    o.t0.saturating_sub(last),
                    &t,
                    c.svc_timeout_s,
                );
                if a != ct::reusable(
                    c.flags,
                    p.proto,
                    o.t1.saturating_sub(last),
                    &t,
                    c.svc_timeout_s,
                ) {
                    self.ambiguous += 1;
                    return (true, !ours);
                }
                a
            }
            Some(_) => true,
            None => ct::reusable(e.flags, p.proto, o.t0.saturating_sub(e.last_seen_ns), &t, 0),
        };
        (gone, gone && !ours)
    }

    /// Backend → LB address:port of a SNAT'ed flow: VIP → client restored; the state moves on
    /// (the flow's conntrack entry too when it changes).
    pub fn reply(&mut self, f: &[u8], p: &Pkt, key: FlowKey) -> Expect {
        let bytes = f.len() as u64;
        let mut e = self.shadow.snat[&key];
        let mut x = Expect::default();
        e.last_seen_ns = NOW;
        let flags = ct::step(e.flags, p.proto, p.tcp_flags, true);
        if flags != e.flags {
            e.flags = flags;
            let okey = FlowKey {
                src: e.client,
                dst: e.vip,
                sport: e.client_port,
                dport: e.vip_port,
                proto: p.proto,
                _pad: [0; 3],
            };
            if let Some(mut c) = self.shadow.ct.get(&okey).copied()
                && c.backend_id == e.backend_id
                && (c.snat_port == 0 || c.snat_port == key.dport)
            {
                c.flags = ct::step(c.flags, p.proto, p.tcp_flags, true);
                e.flags = c.flags;
                x.ct.push((okey, Some(c)));
            }
        }
        x.snat.push((key, Some(e)));
        let (out, csum) = self.rw(
            f,
            p,
            &e.vip,
            &e.client,
            u16::from_be(e.vip_port),
            u16::from_be(e.client_port),
        );
        x.out = out;
        x.csum = csum;
        x.action = XDP_PASS;
        x.service = Some((e.service_id, bytes));
        x.reasons.extend([(r::REV_SNAT, bytes), (r::FIB_PASS, 0)]);
        x
    }
}

/// Unused-mode guard: the model knows two modes.
const _: () = assert!(MODE_SNAT != MODE_DSR);
