//! The DSR backend's datapath (`oxilium agent --role backend`): `oxilium_decap` on the --iface(s),
//! taking off only the tunnels of the LB addresses given with `--tunnel-source` (written into
//! `OXI_TUNNEL_SOURCES` before the program is attached), and its counters for `oxilium status`.
use super::loader;
use abi::lb::{Addr, Counter, MAX_TUNNEL_SOURCES, names, reason};
use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TcAttachType},
};
use serde_json::{Value, json};
use std::{net::IpAddr, path::Path};

pub struct Decap {
    /// Keeps the object (and its unpinned source map) alive; the links are pinned.
    _ebpf: Ebpf,
    sources: Vec<IpAddr>,
    stats: PerCpuArray<MapData, Counter>,
}

/// The counters of `OXI_STATS` the decapsulation program uses.
const COUNTERS: [u32; 3] = [reason::DECAP, reason::TUNNEL_REFUSED, reason::ERROR];

impl Decap {
    /// Loads `oxilium_decap`, fills its accepted sources and attaches it to `ifaces`' ingress. No
    /// source: every tunnel packet is refused.
    pub fn load(pin_dir: &Path, ifaces: &[String], sources: &[IpAddr]) -> Result<Decap> {
        if sources.len() > MAX_TUNNEL_SOURCES as usize {
            bail!("--tunnel-source: at most {MAX_TUNNEL_SOURCES} addresses");
        }
        let mut ebpf = loader::load_pinned(super::objects::tc(), pin_dir)?;
        let mut map: HashMap<MapData, Addr, u8> =
            loader::take_map(&mut ebpf, names::TUNNEL_SOURCES)?;
        for s in sources {
            map.insert(lb::compile::addr_bytes(canonical(*s)), 1, 0)
                .with_context(|| format!("writing tunnel source {s}"))?;
        }
        let stats = loader::take_map(&mut ebpf, names::STATS)?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut("oxilium_decap")
            .context("program oxilium_decap")?
            .try_into()?;
        loader::verify("oxilium_decap", || prog.load())?;
        for iface in ifaces {
            let pin = loader::link_pin(pin_dir, "tc_ingress", iface);
            loader::attach_tc_pinned(prog, iface, TcAttachType::Ingress, &pin)?;
        }
        Ok(Decap {
            _ebpf: ebpf,
            sources: sources.to_vec(),
            stats,
        })
    }

    fn counter(&self, r: u32) -> Counter {
        match self.stats.get(&r, 0) {
            Ok(v) => v.iter().fold(Counter::default(), |a, c| Counter {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
            }),
            Err(_) => Counter::default(),
        }
    }

    /// `"tunnel"` of the status: accepted sources and the decapsulation counters.
    pub fn status(&self) -> Value {
        let counters: serde_json::Map<String, Value> = COUNTERS
            .iter()
            .map(|&r| {
                let c = self.counter(r);
                (
                    reason::NAMES[r as usize].to_string(),
                    json!({ "packets": c.packets, "bytes": c.bytes }),
                )
            })
            .collect();
        json!({
            "sources": self.sources.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "counters": counters,
        })
    }
}

/// An IPv4-mapped IPv6 address is its IPv4 address (the map holds IPv4 in mapped form anyway).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
