//! Model of `oxilium_decap` (tc ingress of a DSR backend) from docs/edge-lb.md "DSR": an IP-in-IP
//! packet (outer protocol 4 or 41, IPv4 or IPv6 outside, options / extension headers included)
//! whose outer source is a configured LB loses its outer header, the ethertype follows the inner
//! family, and it goes on (`decap`); from any other source it is dropped (`tunnel_refused`);
//! everything else, malformed frames included, goes on untouched and uncounted.
//!
//! Kernel facts the model states (bpf_skb_adjust_room, not the program): the skb's protocol must
//! be IPv4 or IPv6, so a frame whose tag is still in the packet data (as BPF_PROG_TEST_RUN makes
//! it; a NIC usually strips it into the skb's metadata) cannot be decapsulated; and what is left
//! after the outer header must be at least an inner IP header long (20 / 40 bytes). Both fail as
//! `error` (dropped). A fragment of a tunnel packet is decapsulated as it stands.
use super::model::Expect;
use super::wire::{Read, read};
use abi::lb::reason as r;
use std::collections::HashSet;

/// TCX_NEXT (-1): the tc programs let a packet through to the rest of the hook.
pub const TCX_NEXT: u32 = u32::MAX;
pub const TC_ACT_SHOT: u32 = 2;

pub struct DecapModel {
    pub sources: HashSet<[u8; 16]>,
}

impl DecapModel {
    pub fn step(&self, f: &[u8]) -> Expect {
        let p = match read(f) {
            Read::Ip(p) if p.proto == 4 || p.proto == 41 => p,
            _ => return Expect::verdict(TCX_NEXT, f, None),
        };
        if !self.sources.contains(&p.src) {
            return Expect::verdict(TC_ACT_SHOT, f, Some((r::TUNNEL_REFUSED, f.len() as u64)));
        }
        let outer = p.l4_off - p.l3_off;
        let rest = f.len() - p.l3_off;
        let min = if p.proto == 41 { 40 } else { 20 };
        if p.vlan || outer >= rest || rest - outer < min {
            return Expect::verdict(TC_ACT_SHOT, f, Some((r::ERROR, 0)));
        }
        let mut out = f[..p.l3_off].to_vec();
        let et: u16 = if p.proto == 41 { 0x86dd } else { 0x0800 };
        out[12..14].copy_from_slice(&et.to_be_bytes());
        out.extend_from_slice(&f[p.l4_off..]);
        Expect::verdict(TCX_NEXT, &out, Some((r::DECAP, 0)))
    }
}
