//! What every model hands the harness: the expected verdict, output bytes (checksum fields
//! compared as ones'-complement values, see [`Expect::csum`]), counter increments and the map
//! entries the packet must have left; plus the shadow of the LB maps the models share and the
//! rewrite / encapsulation every translating program does (docs/edge-lb.md "Checksums are updated
//! incrementally", "DSR").
use super::wire::{Pkt, fold, l4_residual, norm, residual, sum};
use abi::lb::{CtEntry, FlowKey, SnatEntry};
use std::collections::HashMap;

/// A timestamp field the program sets to "now": any value in the run's time window matches.
pub const NOW: u64 = u64::MAX;

#[derive(Debug, Default)]
pub struct Expect {
    pub action: u32,
    pub out: Vec<u8>,
    /// Offsets of 16-bit checksum fields in `out`, compared modulo 0xffff (0 and 0xffff are the
    /// same ones'-complement number).
    pub csum: Vec<usize>,
    /// (reason, bytes) increments of the per-reason counters.
    pub reasons: Vec<(u32, u64)>,
    pub service: Option<(u32, u64)>,
    pub backend: Option<(u32, u64)>,
    /// Entries the packet must have left (None: absent), timestamps [`NOW`] or exact.
    pub ct: Vec<(FlowKey, Option<CtEntry>)>,
    pub snat: Vec<(FlowKey, Option<SnatEntry>)>,
}

impl Expect {
    pub fn verdict(action: u32, out: &[u8], reason: Option<(u32, u64)>) -> Expect {
        Expect {
            action,
            out: out.to_vec(),
            reasons: reason.into_iter().collect(),
            ..Default::default()
        }
    }
}

/// What the program did, as far as a model needs it to resolve a set-valued choice.
pub struct Obs<'a> {
    pub out: &'a [u8],
    /// The kernel's conntrack entry at the packet's key after the run.
    pub ct: Option<CtEntry>,
    /// Per-reason packet increments of this run.
    pub reasons: &'a [u64],
    pub t0: u64,
    pub t1: u64,
}

/// The shadow of the conntrack and SNAT maps: what the model says the kernel holds.
#[derive(Default)]
pub struct Shadow {
    pub ct: HashMap<FlowKey, CtEntry>,
    pub snat: HashMap<FlowKey, SnatEntry>,
}

/// Sets the checksum field at `field` so that the covered data's residual is `r` (the data's
/// sum without the field is `rest`).
fn keep_residual(out: &mut [u8], field: usize, rest: u64, r: u16) {
    let v = fold(r as u64 + !fold(rest) as u64);
    out[field..field + 2].copy_from_slice(&v.to_be_bytes());
}

/// The frame `f` (packet `p`) with addresses and ports rewritten, checksums updated so that
/// their residuals stay what they were (a wrong checksum stays as wrong); an IPv4 UDP checksum of
/// 0 stays 0. Returns the frame and its checksum field offsets.
pub fn rewrite(
    f: &[u8],
    p: &Pkt,
    src: &[u8; 16],
    dst: &[u8; 16],
    sport: u16,
    dport: u16,
) -> (Vec<u8>, Vec<usize>) {
    let mut out = f.to_vec();
    let l3 = p.l3_off;
    let r4 = l4_residual(f, p);
    let mut fields = Vec::new();
    if p.v6 {
        out[l3 + 8..l3 + 24].copy_from_slice(src);
        out[l3 + 24..l3 + 40].copy_from_slice(dst);
    } else {
        let ihl = (f[l3] & 0x0f) as usize * 4;
        let r3 = residual(&[&f[l3..l3 + ihl]]);
        out[l3 + 12..l3 + 16].copy_from_slice(&src[12..]);
        out[l3 + 16..l3 + 20].copy_from_slice(&dst[12..]);
        out[l3 + 10] = 0;
        out[l3 + 11] = 0;
        let rest = sum(&out[l3..l3 + ihl]);
        keep_residual(&mut out, l3 + 10, rest, r3);
        fields.push(l3 + 10);
    }
    let o = p.l4_off;
    out[o..o + 2].copy_from_slice(&sport.to_be_bytes());
    out[o + 2..o + 4].copy_from_slice(&dport.to_be_bytes());
    let c = p.csum_off();
    let zero_udp = p.proto == 17 && !p.v6 && f[c] == 0 && f[c + 1] == 0;
    if !zero_udp {
        let mut q = *p;
        q.src = *src;
        q.dst = *dst;
        out[c] = 0;
        out[c + 1] = 0;
        // residual() of the new data with a 0 field is the folded rest.
        let rest = l4_residual(&out, &q) as u64;
        keep_residual(&mut out, c, rest, r4);
        fields.push(c);
    }
    (out, fields)
}

/// DSR: the frame wrapped in an outer header `src` → `dst` (IPv4 when `dst` is IPv4-mapped),
/// placed after the L2 header (a tag kept as 802.1Q). IPv4 outer: identification of the inner
/// IPv4 packet (random around IPv6: `id` is then whatever the output holds), DF copied (set
/// around IPv6), TTL 64. IPv6 outer: hop limit 64, flow label 0 (no port carried).
pub fn encapsulate(f: &[u8], p: &Pkt, src: &[u8; 16], dst: &[u8; 16], id: u16) -> Vec<u8> {
    let outer_v4 = dst[..12] == super::wire::mapped4(&[0; 4])[..12];
    let mut out = f[..p.l3_off].to_vec();
    let et: u16 = if outer_v4 { 0x0800 } else { 0x86dd };
    if p.vlan {
        out[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        out[16..18].copy_from_slice(&et.to_be_bytes());
    } else {
        out[12..14].copy_from_slice(&et.to_be_bytes());
    }
    let inner = if p.v6 { 41 } else { 4 };
    if outer_v4 {
        let tot = (p.l3_len + 20) as u16;
        let fo: u16 = if p.df { 0x4000 } else { 0 };
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&tot.to_be_bytes());
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&fo.to_be_bytes());
        h.extend_from_slice(&[64, inner, 0, 0]);
        h.extend_from_slice(&src[12..]);
        h.extend_from_slice(&dst[12..]);
        let c = super::wire::ipv4_checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        out.extend_from_slice(&h);
    } else {
        out.extend_from_slice(&[0x60, 0, 0, 0]);
        out.extend_from_slice(&(p.l3_len as u16).to_be_bytes());
        out.extend_from_slice(&[inner, 64]);
        out.extend_from_slice(src);
        out.extend_from_slice(dst);
    }
    out.extend_from_slice(&f[p.l3_off..]);
    out
}

/// Compares two checksum fields as ones'-complement numbers.
pub fn same_csum(a: &[u8], b: &[u8]) -> bool {
    norm(u16::from_be_bytes([a[0], a[1]])) == norm(u16::from_be_bytes([b[0], b[1]]))
}
