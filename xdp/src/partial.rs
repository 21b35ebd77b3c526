//! Generic XDP (`--xdp-mode generic`, `--nodeport-acceleration generic`) runs on skbs, and an skb
//! from a local sender with TX checksum offload (a container on a veth) is CHECKSUM_PARTIAL: its
//! TCP / UDP checksum field holds only the seed, the folded pseudo-header sum, and the rest is
//! summed on transmit from `csum_start`. The incremental update of a complete checksum
//! (datapath::nat) would turn that seed into garbage: the seed must follow the addresses (added,
//! not subtracted) and not the ports, which are summed later with the payload.
//!
//! XDP cannot read `ip_summed`; a packet counts as partial when its checksum field equals the
//! seed its pseudo-header gives. Only checked in generic mode (the agent sets
//! [`OXI_GENERIC_XDP`] at load): a complete checksum matches its seed with a chance of 2^-16,
//! and on a NIC (native mode) no packet is ever partial.
use abi::lb::FlowKey;
use datapath::{
    csum::{self, Delta},
    headers::*,
    nat::last4,
    parse::{Flow, ptr_at},
};

/// 1 when the object is attached in generic (skb) mode; set by the loader before loading.
#[unsafe(no_mangle)]
static OXI_GENERIC_XDP: u8 = 0;

#[inline(always)]
fn csum_off(proto: u8) -> Option<usize> {
    match proto {
        IPPROTO_TCP => Some(TCP_CSUM_OFF),
        IPPROTO_UDP => Some(UDP_CSUM_OFF),
        _ => None,
    }
}

/// The flow's pseudo-header sum (addresses, protocol, L4 length), folded.
#[inline(always)]
fn seed(f: &Flow) -> u16 {
    let l4_len = (f.l3_len - (f.l4_off - f.l3_off)) as u16;
    let first = if f.v6 { 0 } else { 12 };
    let (src, dst) = (&f.key.src, &f.key.dst);
    let mut s: u32 = 0;
    let mut i = first;
    while i < 16 {
        s += u16::from_ne_bytes([src[i], src[i + 1]]) as u32;
        s += u16::from_ne_bytes([dst[i], dst[i + 1]]) as u32;
        i += 2;
    }
    s += u16::from_ne_bytes([0, f.key.proto]) as u32;
    s += l4_len.to_be() as u32;
    csum::fold(s)
}

/// The checksum field of a partial packet (`Some(seed)`), read before the rewrite; `None` for a
/// complete checksum or outside generic mode.
#[inline(always)]
pub fn partial_seed(start: usize, end: usize, f: &Flow) -> Option<u16> {
    // SAFETY: a read-only global the loader patched.
    if unsafe { core::ptr::read_volatile(&OXI_GENERIC_XDP) } == 0 {
        return None;
    }
    let field = ptr_at::<u16>(start, end, f.l4_off + csum_off(f.key.proto)?)?;
    let stored = unsafe { *field };
    let s = seed(f);
    // 0 and 0xffff are the same one's-complement value.
    let same = stored == s || (stored | s == 0xffff && (stored == 0 || s == 0));
    (same && stored != 0).then_some(stored)
}

/// After the rewrite from `f` to `new`: writes the seed of the new pseudo-header (the old seed
/// plus the address change).
#[inline(always)]
pub fn fix_seed(start: usize, end: usize, f: &Flow, new: &FlowKey, old_seed: u16) -> Option<()> {
    let field = ptr_at::<u16>(start, end, f.l4_off + csum_off(f.key.proto)?)?;
    let mut d = Delta::new();
    if f.v6 {
        d.bytes(&f.key.src, &new.src);
        d.bytes(&f.key.dst, &new.dst);
    } else {
        d.bytes(&last4(&f.key.src), &last4(&new.src));
        d.bytes(&last4(&f.key.dst), &last4(&new.dst));
    }
    // apply(c) = c − Δ; the seed must grow by Δ: ~apply(~seed) = seed + Δ.
    unsafe { *field = !d.apply(!old_seed) };
    Some(())
}
