//! Katran's XDP balancer as an external baseline of the single-shot table
//! (`OXILIUM_BENCH_KATRAN=FILE`, benches/xdp/single.rs): the object built by the reader from
//! Katran's own sources (facebookincubator/katran, katran/lib/bpf/balancer_kern.c; how: see
//! docs/benchmarks.md, "Against Katran in the same run"), loaded here with aya and configured
//! by the layout its BPF headers give its maps, the way its userspace library fills them:
//! - `vip_map`: the DSR VIPs of the bench (IPv4 as VIP number 0, IPv6 as 1), TCP, no flags;
//! - `reals`: three reals per VIP (ids 1–3 IPv4, 4–6 IPv6, flag `F_IPV6` on the latter);
//! - `ch_rings`: each VIP's ring of `RING_SIZE` slots at `RING_SIZE * vip_num`, a Maglev
//!   population of its three reals (the algorithm Katran's userspace uses, written here);
//! - `ctl_array[0]`: the default gateway's MAC, the outer frame's destination;
//! - `lru_mapping[cpu]`: a connection table (`LRU_HASH`, flow key → real position) per possible
//!   CPU, `LRU_SIZE` entries (Katran's default `LruSize`, or `OXILIUM_BENCH_KATRAN_LRU=N`)
//!   split over them, as Katran makes one per forwarding core; with
//!   `OXILIUM_BENCH_KATRAN_LRU=fallback` none, so Katran uses its 1,000-entry `fallback_cache`.
//!
//! Nothing in Katran's program is changed; every run must return XDP_TX (the harness checks it)
//! and [`Katran::check`] checks the frames it leaves (outer header to one of the VIP's reals,
//! the client's packet intact behind it) and [`Katran::misses`] which path each case took, so a
//! misconfigured Katran cannot give a fast but wrong figure.
use super::*;
use aya::maps::{Array, ArrayOfMaps, HashMap, MapData, PerCpuArray};
use std::{collections::BTreeMap, net::Ipv6Addr, os::fd::FromRawFd};

/// Katran's defaults (balancer_consts.h).
const MAX_VIPS: u32 = 512;
const RING_SIZE: u32 = 65_537;
const F_IPV6: u8 = 1;
/// `stats[MAX_VIPS + LRU_CNTRS]`: v1 counts packets to a VIP, v2 connection-table misses.
const LRU_CNTRS: u32 = MAX_VIPS;
/// KatranConfig's default `LruSize`, split over the forwarding cores.
const LRU_SIZE: u32 = 8_000_000;
/// sizeof(struct flow_key), sizeof(struct real_pos_lru).
const FLOW_KEY: u32 = 40;
const REAL_POS_LRU: u32 = 16;
/// The default gateway's MAC written into `ctl_array[0]`.
const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const REALS4: [&str; 3] = ["10.10.0.1", "10.10.0.2", "10.10.0.3"];
const REALS6: [&str; 3] = ["fd00::1", "fd00::2", "fd00::3"];

/// struct vip_definition: address (IPv4 in the first 4 bytes), port and protocol as on the wire.
#[repr(C)]
#[derive(Clone, Copy)]
struct VipDefinition {
    addr: [u8; 16],
    port: [u8; 2],
    proto: u8,
    _pad: u8,
}

/// struct vip_meta.
#[repr(C)]
#[derive(Clone, Copy)]
struct VipMeta {
    flags: u32,
    vip_num: u32,
}

/// struct real_definition.
#[repr(C)]
#[derive(Clone, Copy)]
struct RealDefinition {
    addr: [u8; 16],
    flags: u8,
    _pad: [u8; 3],
}

/// struct lb_stats.
#[repr(C)]
#[derive(Clone, Copy)]
struct LbStats {
    v1: u64,
    v2: u64,
}

// SAFETY: plain C layouts without implicit padding.
unsafe impl aya::Pod for VipDefinition {}
unsafe impl aya::Pod for VipMeta {}
unsafe impl aya::Pod for RealDefinition {}
unsafe impl aya::Pod for LbStats {}

fn addr16(a: IpAddr) -> [u8; 16] {
    let mut b = [0; 16];
    match a {
        IpAddr::V4(a) => b[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => b = a.octets(),
    }
    b
}

/// splitmix64, for the Maglev offsets and skips.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A Maglev population of `RING_SIZE` slots (a prime) over the real ids `ids`, equal weights.
fn ring(ids: &[u32]) -> Vec<u32> {
    let m = u64::from(RING_SIZE);
    let perm: Vec<(u64, u64)> = ids
        .iter()
        .map(|&id| {
            let h = mix(u64::from(id));
            (h % m, mix(h) % (m - 1) + 1)
        })
        .collect();
    let mut next = vec![0u64; ids.len()];
    let mut slots = vec![0u32; RING_SIZE as usize];
    let mut filled = 0;
    while filled < m {
        for (k, &(offset, skip)) in perm.iter().enumerate() {
            if filled == m {
                break;
            }
            loop {
                let c = ((offset + next[k] * skip) % m) as usize;
                next[k] += 1;
                if slots[c] == 0 {
                    slots[c] = ids[k];
                    filled += 1;
                    break;
                }
            }
        }
    }
    slots
}

/// BPF_MAP_CREATE of an LRU_HASH with Katran's connection-table key and value.
fn lru_map(max_entries: u32) -> MapData {
    #[repr(C)]
    #[derive(Default)]
    struct Attr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        rest: [u64; 12],
    }
    let mut a = Attr {
        map_type: 9, // BPF_MAP_TYPE_LRU_HASH
        key_size: FLOW_KEY,
        value_size: REAL_POS_LRU,
        max_entries,
        ..Default::default()
    };
    let fd = common::bpf(0, &mut a); // BPF_MAP_CREATE
    assert!(
        fd >= 0,
        "katran lru: BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a descriptor we just got and own.
    MapData::from_fd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }).unwrap()
}

pub struct Katran {
    ebpf: Ebpf,
    /// How the bench set it up, for the table's header.
    pub about: String,
    pub per_cpu_lru: bool,
}

impl Katran {
    /// Loads Katran's object `path` and fills its maps; the DSR VIPs are `vip4` and `vip6`.
    pub fn load(path: &str, vip4: &str, vip6: &str) -> Katran {
        let bytes =
            std::fs::read(path).unwrap_or_else(|e| panic!("OXILIUM_BENCH_KATRAN={path}: {e}"));
        let mut ebpf = Ebpf::load(&bytes)
            .unwrap_or_else(|e| panic!("OXILIUM_BENCH_KATRAN={path}: loading: {e}"));
        let prog: &mut Xdp = ebpf
            .program_mut("balancer_ingress")
            .unwrap_or_else(|| panic!("OXILIUM_BENCH_KATRAN={path}: no balancer_ingress"))
            .try_into()
            .unwrap();
        prog.load()
            .unwrap_or_else(|e| panic!("OXILIUM_BENCH_KATRAN={path}: verifying: {e}"));
        let map = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .unwrap_or_else(|| panic!("OXILIUM_BENCH_KATRAN={path}: no map {name}"))
        };

        let mut vips: HashMap<_, VipDefinition, VipMeta> =
            HashMap::try_from(map(&mut ebpf, "vip_map")).unwrap();
        let mut reals: Array<_, RealDefinition> = Array::try_from(map(&mut ebpf, "reals")).unwrap();
        let mut rings: Array<_, u32> = Array::try_from(map(&mut ebpf, "ch_rings")).unwrap();
        for (vip_num, (vip, backends)) in [(vip4, &REALS4), (vip6, &REALS6)].into_iter().enumerate()
        {
            let vip_num = vip_num as u32;
            let fe: std::net::SocketAddr = vip.parse().unwrap();
            let key = VipDefinition {
                addr: addr16(fe.ip()),
                port: fe.port().to_be_bytes(),
                proto: 6, // IPPROTO_TCP
                _pad: 0,
            };
            vips.insert(key, VipMeta { flags: 0, vip_num }, 0).unwrap();
            let ids: Vec<u32> = (1..=3).map(|k| 3 * vip_num + k).collect();
            for (&id, b) in ids.iter().zip(backends) {
                let a: IpAddr = b.parse().unwrap();
                let flags = if a.is_ipv6() { F_IPV6 } else { 0 };
                let real = RealDefinition {
                    addr: addr16(a),
                    flags,
                    _pad: [0; 3],
                };
                reals.set(id, real, 0).unwrap();
            }
            for (pos, id) in ring(&ids).into_iter().enumerate() {
                rings.set(RING_SIZE * vip_num + pos as u32, id, 0).unwrap();
            }
        }
        let mut ctl: Array<_, u64> = Array::try_from(map(&mut ebpf, "ctl_array")).unwrap();
        let mut mac = [0u8; 8];
        mac[..6].copy_from_slice(&GATEWAY_MAC);
        ctl.set(0, u64::from_ne_bytes(mac), 0).unwrap();

        let lru = std::env::var("OXILIUM_BENCH_KATRAN_LRU").ok();
        let per_cpu_lru = lru.as_deref() != Some("fallback");
        let size: u32 = lru.filter(|_| per_cpu_lru).map_or(LRU_SIZE, |v| {
            v.parse()
                .unwrap_or_else(|e| panic!("OXILIUM_BENCH_KATRAN_LRU={v}: {e}"))
        });
        let cpus = aya::util::nr_cpus().unwrap() as u32;
        assert!(
            size >= cpus,
            "OXILIUM_BENCH_KATRAN_LRU={size}: at least one entry per CPU ({cpus})"
        );
        let about = if per_cpu_lru {
            let mut lrus: ArrayOfMaps<_, MapData> =
                ArrayOfMaps::try_from(map(&mut ebpf, "lru_mapping")).unwrap();
            for cpu in 0..cpus {
                lrus.set(cpu, &lru_map(size / cpus), 0).unwrap();
            }
            format!("per-CPU LRU {cpus} × {}", size / cpus)
        } else {
            "no per-CPU LRU: fallback_cache (1,000 entries)".to_string()
        };
        let about = format!(
            "katran: {path}, balancer_ingress, IPIP flavor (checked on every frame), \
             3 reals per VIP, ring {RING_SIZE}, {about}"
        );
        Katran {
            ebpf,
            about,
            per_cpu_lru,
        }
    }

    pub fn fd(&self) -> i32 {
        let p: &Xdp = self
            .ebpf
            .program("balancer_ingress")
            .unwrap()
            .try_into()
            .unwrap();
        common::fd_of(p.fd().unwrap())
    }

    /// Connection-table misses so far, all CPUs (`stats[MAX_VIPS + LRU_CNTRS].v2`).
    pub fn misses(&self) -> u64 {
        let stats: PerCpuArray<_, LbStats> =
            PerCpuArray::try_from(self.ebpf.map("stats").unwrap()).unwrap();
        stats.get(&LRU_CNTRS, 0).unwrap().iter().map(|s| s.v2).sum()
    }

    /// Runs `n` packets `pkt(i)` once more (not timed) and checks each frame Katran leaves:
    /// XDP_TX, the gateway's MAC, an outer IPv4 (valid checksum) or IPv6 header from Katran's
    /// source prefix to one of the VIP's reals, the client's IP packet intact behind it.
    /// Prints how the flows spread over the reals.
    pub fn check(&self, name: &str, md: &[u8], n: u32, pkt: &dyn Fn(u32) -> Vec<u8>) {
        let mut spread = BTreeMap::new();
        for i in 0..n {
            let p = pkt(i);
            let (action, _, out) = common::run_out(self.fd(), &p, md);
            let at = |what: &str| format!("katran, {name}, packet {i}: {what}");
            assert_eq!(action, 3, "{}", at("XDP_TX expected"));
            assert_eq!(out[..6], GATEWAY_MAC, "{}", at("to the gateway's MAC"));
            assert_eq!(out[6..12], p[..6], "{}", at("from the LB's MAC"));
            let (outer, real) = if p[12..14] == [0x08, 0x00] {
                let h = &out[14..34];
                assert_eq!((h[0], h[9]), (0x45, 4), "{}", at("outer IPv4, IPIP"));
                let sum = h
                    .chunks(2)
                    .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                    .sum::<u32>();
                let sum = (sum & 0xffff) + (sum >> 16);
                assert_eq!(sum & 0xffff, 0xffff, "{}", at("outer IPv4 checksum"));
                assert_eq!(
                    h[12..14],
                    [172, 16],
                    "{}",
                    at("Katran's IPIP source prefix")
                );
                let len = u16::from_be_bytes([h[2], h[3]]) as usize;
                assert_eq!(len, p.len() - 14 + 20, "{}", at("outer length"));
                let d = [h[16], h[17], h[18], h[19]];
                (20, IpAddr::from(d))
            } else {
                let h = &out[14..54];
                assert_eq!(
                    (h[0] >> 4, h[6]),
                    (6, 41),
                    "{}",
                    at("outer IPv6, IPv6-in-IPv6")
                );
                let len = u16::from_be_bytes([h[4], h[5]]) as usize;
                assert_eq!(len, p.len() - 14, "{}", at("outer payload length"));
                let d: [u8; 16] = h[24..40].try_into().unwrap();
                (40, IpAddr::from(Ipv6Addr::from(d)))
            };
            assert_eq!(out.len(), p.len() + outer, "{}", at("frame length"));
            assert_eq!(out[14 + outer..], p[14..], "{}", at("inner packet intact"));
            let reals: Vec<IpAddr> = REALS4
                .iter()
                .chain(&REALS6)
                .map(|r| r.parse().unwrap())
                .collect();
            assert!(reals.contains(&real), "{}", at("to one of the reals"));
            *spread.entry(real).or_insert(0u32) += 1;
        }
        let spread: Vec<String> = spread.iter().map(|(r, c)| format!("{r} {c}")).collect();
        println!(
            "  (katran, {name}: {n} frames checked; reals: {})",
            spread.join(", ")
        );
    }
}
