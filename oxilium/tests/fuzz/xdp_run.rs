//! The edge LB's XDP program under the fuzzer: `oxilium_lb` loaded (no interface) with its maps
//! pinned in a folder of its own, on a thread in a fresh network namespace (the FIB never
//! answers), programmed through the real path (model → compile → Reconciler<KernelMaps>), fed
//! packets with BPF_PROG_TEST_RUN at repeat 1, and compared with [`LbModel`] after every packet;
//! the whole conntrack / SNAT maps and the per-service / per-backend counters every 500 packets.
use super::harness::{KernelView, Tally, compare, now_ns};
use super::model::{Obs, Shadow};
use super::traffic::Scene;
use super::xdp_lb::LbModel;
use crate::bpffs::PinDir;
use crate::xdp_lb::{ThreadNetns, XdpMode, compile, loader, unique};
use abi::lb::{Counter, CtEntry, FlowKey, LbConfig, SnatEntry, names, reason};
use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use lb::{model::Model, reconcile::Reconciler};
use oxilium::bpf::lb_maps::KernelMaps;
use std::collections::HashMap as Map2;

pub struct Pinned {
    pub ct: HashMap<MapData, FlowKey, CtEntry>,
    pub snat: HashMap<MapData, FlowKey, SnatEntry>,
    pub stats: PerCpuArray<MapData, Counter>,
}

impl Pinned {
    pub fn open(dir: &std::path::Path) -> Pinned {
        let data = |n: &str| MapData::from_pin(dir.join(n)).expect("pinned map");
        Pinned {
            ct: HashMap::try_from(Map::LruHashMap(data(names::CONNTRACK))).unwrap(),
            snat: HashMap::try_from(Map::LruHashMap(data(names::SNAT))).unwrap(),
            stats: PerCpuArray::try_from(Map::PerCpuArray(data(names::STATS))).unwrap(),
        }
    }

    pub fn reasons(&self) -> Vec<(u64, u64)> {
        (0..reason::COUNT)
            .map(|i| {
                let v = self.stats.get(&i, 0).expect("stats");
                v.iter()
                    .fold((0, 0), |a, c| (a.0 + c.packets, a.1 + c.bytes))
            })
            .collect()
    }
}

impl KernelView for Pinned {
    fn ct(&self, k: &FlowKey) -> Option<CtEntry> {
        self.ct.get(k, 0).ok()
    }
    fn snat(&self, k: &FlowKey) -> Option<SnatEntry> {
        self.snat.get(k, 0).ok()
    }
}

/// Runs one frame through an XDP or tc program with BPF_PROG_TEST_RUN, repeat 1 (a larger
/// repeat would run the program on its own output): (verdict, output), or the kernel's refusal.
pub fn try_run<P>(prog: &P, pkt: &[u8]) -> Result<(u32, Vec<u8>), String>
where
    for<'a> P: TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    let mut out = vec![0u8; pkt.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })
        .map_err(|e| format!("BPF_PROG_TEST_RUN of {}: {e:?}", super::harness::hex(pkt)))?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

pub fn test_run<P>(prog: &P, pkt: &[u8]) -> (u32, Vec<u8>)
where
    for<'a> P: TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    try_run(prog, pkt).unwrap_or_else(|e| panic!("{e}"))
}

/// tc (skb) runs: the kernel refuses a frame whose ethertype says IPv4 / IPv6 but which is
/// shorter than that header (EINVAL), as it refuses any frame under 14 bytes.
pub fn skb_refused(f: &[u8]) -> bool {
    match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => f.len() < 14 + 20,
        0x86dd => f.len() < 14 + 40,
        _ => false,
    }
}

/// One scenario of the edge LB: the program, its maps and the model read from them.
pub struct XdpLb {
    pub ebpf: Ebpf,
    pub rec: Reconciler<KernelMaps>,
    pub pins: Pinned,
    pub model: LbModel,
    _dir: PinDir,
    _ns: ThreadNetns,
}

impl XdpLb {
    pub fn new(m: &Model, cfg: LbConfig) -> XdpLb {
        let ns = ThreadNetns::fresh();
        let dir = PinDir::new(&unique("fuzz"));
        let mut ebpf =
            loader::load_xdp(dir.path(), &[], XdpMode::default()).expect("loading oxilium_lb");
        let mut maps = KernelMaps::from_ebpf(&mut ebpf).expect("maps");
        maps.set_config(&cfg).expect("config");
        let mut rec = Reconciler::open(maps).expect("reconciler");
        rec.apply(&compile::compile(m).expect("compile"))
            .expect("apply");
        let model = read_model(rec.datapath(), cfg);
        let pins = Pinned::open(dir.path());
        XdpLb {
            ebpf,
            rec,
            pins,
            model,
            _dir: dir,
            _ns: ns,
        }
    }
}

/// The configuration as the agent wrote it into the maps: the model's input.
pub fn read_model(maps: &KernelMaps, cfg: LbConfig) -> LbModel {
    use lb::reconcile::Datapath;
    let services: Map2<_, _> = maps.services().unwrap().into_iter().collect();
    let tables = services
        .values()
        .filter(|v| v.table_size > 0)
        .map(|v| (v.id, maps.table(v.id).unwrap()))
        .collect();
    LbModel {
        services,
        backends: maps.backends().unwrap().into_iter().collect(),
        tables,
        cfg,
        shadow: Shadow::default(),
        ambiguous: 0,
    }
}

/// Runs `n` packets of `scene` through `lb`, tallying into `t`.
pub fn fuzz(lb: &mut XdpLb, scene: &Scene, rng: &mut super::frames::Rng, n: usize, t: &mut Tally) {
    let mut before = lb.pins.reasons();
    let mut svc_tot: Map2<u32, (u64, u64)> = Map2::new();
    let mut be_tot: Map2<u32, (u64, u64)> = Map2::new();
    let mut done = 0;
    while done < n {
        let replies: Vec<FlowKey> = lb.model.shadow.snat.keys().copied().collect();
        let (frame, kind) = scene.next(rng, &replies);
        // One frame in 400 is also cut at every length from 14 bytes.
        let mut frames = vec![(frame.clone(), kind)];
        if done % 400 == 7 {
            frames.extend((14..frame.len()).map(|l| (frame[..l].to_vec(), "truncation sweep")));
        }
        for (f, kind) in frames {
            let t0 = now_ns();
            let prog: &Xdp = lb.ebpf.program("oxilium_lb").unwrap().try_into().unwrap();
            let (action, out) = test_run(prog, &f);
            let t1 = now_ns();
            let after = lb.pins.reasons();
            let delta: Vec<(u64, u64)> = after
                .iter()
                .zip(&before)
                .map(|(a, b)| (a.0 - b.0, a.1 - b.1))
                .collect();
            before = after;
            let key = match super::wire::read(&f) {
                super::wire::Read::Ip(p) if p.proto == 6 || p.proto == 17 => Some(p.key()),
                _ => None,
            };
            let pk: Vec<u64> = delta.iter().map(|d| d.0).collect();
            let obs = Obs {
                out: &out,
                ct: key.and_then(|k| lb.pins.ct(&k)),
                reasons: &pk,
                t0,
                t1,
            };
            t.packets += 1;
            *t.verdicts.entry(action).or_default() += 1;
            *t.kinds.entry(kind).or_default() += 1;
            match lb.model.step(&f, &obs) {
                Err(e) => {
                    t.differ(format!("{e}\n  input {}", super::harness::hex(&f)));
                    resync(lb, t, false);
                }
                Ok(x) => {
                    if let Some((id, b)) = x.service {
                        let c = svc_tot.entry(id).or_default();
                        *c = (c.0 + 1, c.1 + b);
                    }
                    if let Some((id, b)) = x.backend {
                        let c = be_tot.entry(id).or_default();
                        *c = (c.0 + 1, c.1 + b);
                    }
                    let bad = compare(
                        &x,
                        action,
                        &out,
                        &delta,
                        &lb.pins,
                        &mut lb.model.shadow,
                        t0,
                        t1,
                    );
                    if !bad.is_empty() {
                        t.differ(format!(
                            "{kind} packet {}:\n  input {}\n  {}",
                            t.packets,
                            super::harness::hex(&f),
                            bad.join("\n  ")
                        ));
                    }
                }
            }
            done += 1;
            if done % 500 == 0 || done >= n {
                resync(lb, t, true);
                counters(lb, &svc_tot, &be_tot, t);
            }
        }
    }
    t.ambiguous += lb.model.ambiguous;
}

/// Compares the whole conntrack and SNAT maps with the shadow (when `check`), then takes the
/// kernel's as the shadow.
fn resync(lb: &mut XdpLb, t: &mut Tally, check: bool) {
    let ct: Map2<FlowKey, CtEntry> = lb.pins.ct.iter().filter_map(|r| r.ok()).collect();
    let snat: Map2<FlowKey, SnatEntry> = lb.pins.snat.iter().filter_map(|r| r.ok()).collect();
    if check {
        for (k, v) in &ct {
            if lb.model.shadow.ct.get(k) != Some(v) {
                t.differ(format!(
                    "conntrack entry the model did not make: {k:?} {v:?}"
                ));
            }
        }
        for k in lb.model.shadow.ct.keys().filter(|k| !ct.contains_key(k)) {
            t.differ(format!("conntrack entry gone: {k:?}"));
        }
        for (k, v) in &snat {
            if lb.model.shadow.snat.get(k) != Some(v) {
                t.differ(format!("SNAT entry the model did not make: {k:?} {v:?}"));
            }
        }
        for k in lb
            .model
            .shadow
            .snat
            .keys()
            .filter(|k| !snat.contains_key(k))
        {
            t.differ(format!("SNAT entry gone: {k:?}"));
        }
    }
    lb.model.shadow.ct = ct;
    lb.model.shadow.snat = snat;
}

fn counters(lb: &XdpLb, svc: &Map2<u32, (u64, u64)>, be: &Map2<u32, (u64, u64)>, t: &mut Tally) {
    let maps = lb.rec.datapath();
    for v in lb.model.services.values().filter(|v| v.id != 0) {
        let c = maps.service_counter(v.id);
        let want = svc.get(&v.id).copied().unwrap_or_default();
        if (c.packets, c.bytes) != want {
            t.differ(format!("service {} counter {c:?}, model {want:?}", v.id));
        }
    }
    for id in lb.model.backends.keys() {
        let c = maps.backend_counter(*id);
        let want = be.get(id).copied().unwrap_or_default();
        if (c.packets, c.bytes) != want {
            t.differ(format!("backend {id} counter {c:?}, model {want:?}"));
        }
    }
}
