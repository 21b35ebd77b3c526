//! The engine's output into the kernel, differences only: what was written is held in memory
//! and compared with what is wanted, so a change costs writes in proportion to what it changes.
//! Order per endpoint: the policy map first, then its flags (a map is complete before it is in
//! force).
use super::{AllowLocalhost, PolicyAgent};
use crate::bpf::policy::PolicyMaps;
use abi::{
    lb::Addr,
    policy::{IpcacheValue, PolicyKey, PolicyValue, ep_flags},
};
use anyhow::{Context, Result};
use policy::IdentityAllocator;
use policy::identity::{cidr_labels, reserved};
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

/// What the kernel holds, as written by this agent.
#[derive(Default)]
pub struct Held {
    maps: HashMap<u32, BTreeMap<PolicyKey, PolicyValue>>,
    ipcache: BTreeMap<(u32, Addr), IpcacheValue>,
}

impl Held {
    pub fn forget(&mut self, maps: &mut PolicyMaps, id: u32) {
        self.maps.remove(&id);
        let _ = maps.remove_endpoint(id);
    }
}

/// The 16-byte form (IPv4-mapped) and the prefix length in it.
pub fn mapped(ip: IpAddr, len: u8) -> (u32, Addr) {
    match ip {
        IpAddr::V4(a) => (96 + u32::from(len), a.to_ipv6_mapped().octets()),
        IpAddr::V6(a) => (u32::from(len), a.octets()),
    }
}

fn full(ip: IpAddr) -> (u32, Addr) {
    mapped(ip, if ip.is_ipv4() { 32 } else { 128 })
}

impl PolicyAgent {
    /// The flags every endpoint gets.
    pub(super) fn endpoint_flags(&self) -> u32 {
        let mut f = ep_flags::POLICY;
        if self.flags.audit {
            f |= ep_flags::AUDIT;
        }
        if self.flags.allow_localhost == AllowLocalhost::Policy {
            f |= ep_flags::NO_HOST_ALLOW;
        }
        f
    }

    /// Writes one local endpoint's map (differences), then its identity and flags.
    pub(super) fn regenerate(&mut self, id: u32) -> Result<()> {
        let Some(l) = self.local.get(&id).cloned() else {
            return Ok(());
        };
        let Some(ep) = self.engine.endpoint(&l.key) else {
            return Ok(());
        };
        let audit = self.engine.cfg.audit;
        let want: BTreeMap<PolicyKey, PolicyValue> = ep
            .policy
            .map
            .iter()
            .map(|(k, e)| (k.to_abi(), e.to_abi(k, audit)))
            .collect();
        let identity = ep.identity;
        let mut inner = self.maps.endpoint_map(id)?;
        let held = self.kernel.maps.entry(id).or_default();
        for (k, v) in &want {
            if held.get(k) != Some(v) {
                PolicyMaps::set_entry(&mut inner, k, v)?;
            }
        }
        for k in held.keys() {
            if !want.contains_key(k) {
                PolicyMaps::remove_entry(&mut inner, k)?;
            }
        }
        *held = want;
        self.l7.set(&l.addrs, &l.key, identity, &ep.policy.map);
        let flags = self.endpoint_flags();
        for ip in &l.addrs {
            self.maps
                .set_endpoint_policy(full(*ip).1, identity, flags)
                .with_context(|| format!("endpoint entry of {ip}"))?;
        }
        Ok(())
    }

    /// The ipcache wanted: pods (local and the folder's), this node's addresses (`host`), the
    /// other nodes' (`remote-node`), the policies' CIDR identities, addresses learnt from DNS.
    fn ipcache_wanted(&self) -> BTreeMap<(u32, Addr), IpcacheValue> {
        let mut want = BTreeMap::new();
        let v = |identity| IpcacheValue {
            identity,
            ..Default::default()
        };
        for (_, rules) in self.engine.policies() {
            for c in rules.iter().flat_map(|r| r.cidrs.iter()) {
                if let Some(id) = self.engine.allocator().lookup(&cidr_labels(c)) {
                    want.insert(mapped(c.addr(), c.prefix_len()), v(id));
                }
            }
        }
        // Addresses learnt from DNS: their identity carries the CIDR labels too, so it replaces a
        // policy's identity of the same /32.
        for (ip, id) in self.engine.fqdn_identities() {
            want.insert(full(ip), v(id));
        }
        for (name, addrs) in &self.folder.nodes {
            if Some(name) != self.node.as_ref() {
                for a in addrs {
                    want.insert(full(*a), v(reserved::REMOTE_NODE));
                }
            }
        }
        for ep in self.engine.endpoints() {
            for ip in &ep.spec.ips {
                want.insert(full(*ip), v(ep.identity));
            }
        }
        // Other nodes' endpoints (kvstore), with the node they live on.
        if let Some(kv) = &self.kv {
            for (ip, (id, node)) in &kv.remote {
                let node_addr = self
                    .folder
                    .nodes
                    .get(node)
                    .and_then(|a| a.first())
                    .map(|a| full(*a).1)
                    .unwrap_or_default();
                want.insert(
                    full(*ip),
                    IpcacheValue {
                        identity: *id,
                        node: node_addr,
                        ..Default::default()
                    },
                );
            }
        }
        for l in self.local.values() {
            if let Some(ep) = self.engine.endpoint(&l.key) {
                for ip in &l.addrs {
                    want.insert(full(*ip), v(ep.identity));
                }
            }
        }
        for a in super::own_addresses() {
            want.insert(full(a), v(reserved::HOST));
        }
        want
    }

    /// The ipcache entries of `addrs` only (an endpoint came or went, DNS data changed): what the
    /// full computation would give them.
    pub(super) fn write_ipcache_of(&mut self, addrs: &[IpAddr]) -> Result<()> {
        for ip in addrs {
            let k = full(*ip);
            let local = self
                .local
                .values()
                .find(|l| l.addrs.contains(ip))
                .and_then(|l| self.engine.endpoint(&l.key));
            let identity = local
                .or_else(|| self.engine.endpoints().find(|e| e.spec.ips.contains(ip)))
                .map(|e| e.identity)
                .or_else(|| self.engine.fqdn_identity(*ip))
                .or_else(|| self.policy_host_identity(*ip));
            let want = identity.map(|identity| IpcacheValue {
                identity,
                ..Default::default()
            });
            match want {
                Some(v) if self.kernel.ipcache.get(&k) != Some(&v) => {
                    self.maps.set_ipcache(k.0, k.1, &v)?;
                    self.kernel.ipcache.insert(k, v);
                }
                Some(_) => {}
                None => {
                    if self.kernel.ipcache.remove(&k).is_some() {
                        self.maps.remove_ipcache(k.0, k.1)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The identity of a policy's own /32 (/128) prefix naming exactly `ip`, if any.
    fn policy_host_identity(&self, ip: IpAddr) -> Option<u32> {
        let c = policy::cidr::Cidr::host(ip);
        self.engine
            .policies()
            .flat_map(|(_, rules)| rules.iter())
            .any(|r| r.cidrs.contains(&c))
            .then(|| self.engine.allocator().lookup(&cidr_labels(&c)))
            .flatten()
    }

    pub(super) fn write_ipcache(&mut self) -> Result<()> {
        let want = self.ipcache_wanted();
        for ((len, addr), v) in &want {
            if self.kernel.ipcache.get(&(*len, *addr)) != Some(v) {
                self.maps.set_ipcache(*len, *addr, v)?;
            }
        }
        for (len, addr) in self.kernel.ipcache.keys() {
            if !want.contains_key(&(*len, *addr)) {
                self.maps.remove_ipcache(*len, *addr)?;
            }
        }
        self.kernel.ipcache = want;
        Ok(())
    }
}
