//! The edge LB's XDP program under the fuzzer: `oxilium_lb` loaded (no interface) with its maps
//! pinned in a folder of its own, on a thread in a fresh network namespace (the FIB never
//! answers), programmed through the real path (model → compile → Reconciler<KernelMaps>), fed
//! packets with BPF_PROG_TEST_RUN at repeat 1, and compared with [`LbModel`] after every packet;
//! the whole conntrack / SNAT maps and the per-service / per-backend counters every 500 packets.
use super::harness::{KernelView, Tally, coarse_now_ns, compare, now_ns};
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

/// (packets, bytes) by service or backend id.
pub type Totals = Map2<u32, (u64, u64)>;

/// One scenario of the edge LB: the program, its maps and the model read from them.
pub struct XdpLb {
    /// The per-service and per-backend (packets, bytes) the model expects so far.
    pub totals: (Totals, Totals),
    /// The program run: `oxilium_lb`, `oxilium_nodeport_xdp`, "tc" (NodePort) or "pod".
    pub prog: &'static str,
    /// The program's own counters (NodePort, pod programs).
    pub np_stats: Option<PerCpuArray<MapData, Counter>>,
    /// The affinity map (pod programs).
    pub aff: Option<HashMap<MapData, abi::sock::AffinityKey, abi::sock::AffinityValue>>,
    /// The socket LB's object (pod programs: its maps joined the reconciler's).
    pub _sock: Option<Ebpf>,
    pub ebpf: Ebpf,
    pub rec: Reconciler<KernelMaps>,
    pub pins: Pinned,
    pub model: LbModel,
    /// The NodePort object (its maps) for the NodePort acceleration.
    pub np: Option<oxilium::bpf::nodeport::NodePort>,
    pub _dir: PinDir,
    pub _ns: ThreadNetns,
}

impl XdpLb {
    /// The program in a namespace of its own whose routes towards the backends (10.0.0.0/16,
    /// fd00::/16, over veth devices, no neighbours) have the MTUs `mtu` (IPv4: the route's
    /// locked MTU metric; IPv6: the device's MTU), forwarding on: the FIB answers "fragmentation
    /// needed" for a DSR packet over the MTU and "no neighbour" for the rest.
    pub fn new(m: &Model, cfg: LbConfig, mtu: (u32, u32)) -> XdpLb {
        let setup = mtu_netns(mtu);
        let ns = ThreadNetns::named(&setup.iter().map(String::as_str).collect::<Vec<_>>());
        let dir = PinDir::new(&unique("fuzz"));
        let mut ebpf =
            loader::load_xdp(dir.path(), &[], XdpMode::default()).expect("loading oxilium_lb");
        let mut maps = KernelMaps::from_ebpf(&mut ebpf).expect("maps");
        maps.set_config(&cfg).expect("config");
        let mut rec = Reconciler::open(maps).expect("reconciler");
        rec.apply(&compile::compile(m).expect("compile"))
            .expect("apply");
        let mut model = read_model(rec.datapath(), cfg);
        model.route_mtu = mtu;
        for b in model.backends.values() {
            let a = super::traffic::to_ip(&b.addr);
            let routed = match a {
                std::net::IpAddr::V4(a) => a.octets()[..2] == [10, 0],
                std::net::IpAddr::V6(a) => a.segments()[0] == 0xfd00,
            };
            assert!(routed, "backend {a} outside the routed prefixes");
        }
        let pins = Pinned::open(dir.path());
        XdpLb {
            totals: Default::default(),
            prog: "oxilium_lb",
            np_stats: None,
            aff: None,
            _sock: None,
            ebpf,
            rec,
            pins,
            model,
            np: None,
            _dir: dir,
            _ns: ns,
        }
    }
}

/// The commands of [`XdpLb::new`]'s namespace (also the tc programs').
pub fn mtu_netns(mtu: (u32, u32)) -> Vec<String> {
    vec![
        "ip link add fz4 type veth peer name fz4p".into(),
        format!(
            "ip link add fz6 mtu {0} type veth peer name fz6p mtu {0}",
            mtu.1
        ),
        "ip link set fz4 up".into(),
        "ip link set fz4p up".into(),
        "ip link set fz6 up".into(),
        "ip link set fz6p up".into(),
        format!("ip route add 10.0.0.0/16 dev fz4 mtu lock {}", mtu.0),
        "ip -6 route add fd00::/16 dev fz6".into(),
        "sysctl -qw net.ipv4.ip_forward=1".into(),
        "sysctl -qw net.ipv6.conf.all.forwarding=1".into(),
    ]
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
        route_mtu: (u32::MAX, u32::MAX),
        paths: Default::default(),
        np: None,
        tc: None,
        pod: None,
    }
}

/// One run of `f`: through the XDP program, or (NodePort at tc, `prog` "tc") through the ingress
/// program seven times in ten and the egress program otherwise, the model told which.
fn run_one(
    lb: &mut XdpLb,
    f: &[u8],
    rng: &mut super::frames::Rng,
) -> Result<(u32, Vec<u8>), String> {
    if lb.prog == "pod" {
        let ingress = rng.pct(65);
        lb.model.pod.as_mut().unwrap().ingress = ingress;
        let name = if ingress {
            "oxilium_pod_ingress"
        } else {
            "oxilium_pod_egress"
        };
        let prog: &aya::programs::SchedClassifier =
            lb.ebpf.program(name).unwrap().try_into().unwrap();
        let r = try_run(prog, f);
        if r.is_ok() && skb_refused(f) {
            return Err(format!(
                "kernel ran a frame it should refuse: {}",
                super::harness::hex(f)
            ));
        }
        return r;
    }
    if lb.prog != "tc" {
        let prog: &Xdp = lb.ebpf.program(lb.prog).unwrap().try_into().unwrap();
        return Ok(test_run(prog, f));
    }
    let ingress = rng.pct(70);
    lb.model.tc = Some(ingress);
    let name = if ingress {
        "oxilium_nodeport_ingress"
    } else {
        "oxilium_nodeport_egress"
    };
    let np = lb.np.as_ref().unwrap();
    let prog: &aya::programs::SchedClassifier = np.ebpf.program(name).unwrap().try_into().unwrap();
    let r = try_run(prog, f);
    if r.is_ok() && skb_refused(f) {
        return Err(format!(
            "kernel ran a frame it should refuse: {}",
            super::harness::hex(f)
        ));
    }
    r
}

/// Runs `n` packets of `scene` through `lb`, tallying into `t`.
pub fn fuzz(lb: &mut XdpLb, scene: &Scene, rng: &mut super::frames::Rng, n: usize, t: &mut Tally) {
    let mut before = lb.pins.reasons();
    let mut np_before = np_counters(lb);
    // Per-service / per-backend totals the model expects, kept across calls on one program.
    let (mut svc_tot, mut be_tot) = std::mem::take(&mut lb.totals);
    let mut done = 0;
    while done < n {
        let replies: Vec<FlowKey> = lb.model.shadow.snat.keys().copied().collect();
        let flows: Vec<FlowKey> = lb.model.shadow.ct.keys().copied().collect();
        let (frame, kind) = scene.next_with(rng, &replies, &flows);
        // One frame in 400 is also cut at every length from 14 bytes.
        let mut frames = vec![(frame.clone(), kind)];
        if done % 400 == 7 {
            // (A large frame: every length up to 160 bytes, then a dozen more.)
            let mut cuts: Vec<usize> = (14..frame.len().min(160)).collect();
            if frame.len() > 160 {
                cuts.extend((0..12).map(|_| 160 + rng.below(frame.len() - 160)));
            }
            frames.extend(
                cuts.into_iter()
                    .map(|l| (frame[..l].to_vec(), "truncation sweep")),
            );
        }
        for (f, kind) in frames {
            // Both clocks' stamps (the conntrack's coarse one, affinity's precise one) fall in
            // [t0, t1].
            let t0 = coarse_now_ns();
            let run = run_one(lb, &f, rng);
            let t1 = now_ns();
            let (action, out) = match run {
                Ok(r) => r,
                Err(e) => {
                    // tc: counted, and only ever for the frames the kernel is known to refuse.
                    *t.kinds.entry("refused by the kernel").or_default() += 1;
                    if !skb_refused(&f) {
                        t.differ(e);
                    }
                    // Not a compared packet: the budget counts those.
                    continue;
                }
            };
            if lb.model.tc == Some(false) || lb.model.pod.as_ref().is_some_and(|p| !p.ingress) {
                *t.kinds.entry("(run at egress)").or_default() += 1;
            }
            let after = lb.pins.reasons();
            let delta: Vec<(u64, u64)> = after
                .iter()
                .zip(&before)
                .map(|(a, b)| (a.0 - b.0, a.1 - b.1))
                .collect();
            before = after;
            let np_after = np_counters(lb);
            let np_delta: Vec<(u64, u64)> = np_after
                .iter()
                .zip(&np_before)
                .map(|(a, b)| (a.0 - b.0, a.1 - b.1))
                .collect();
            np_before = np_after;
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
                    let mut bad = compare(
                        &x,
                        action,
                        &out,
                        &delta,
                        &lb.pins,
                        &mut lb.model.shadow,
                        t0,
                        t1,
                    );
                    if lb.np_stats.is_some() {
                        let mut want = vec![(0u64, 0u64); np_delta.len()];
                        for &(r, b) in &x.np {
                            want[r as usize].0 += 1;
                            want[r as usize].1 += b;
                        }
                        if want != np_delta {
                            bad.push(format!("own counters {np_delta:?}, model {want:?}"));
                        }
                    }
                    bad.extend(affinity(lb, &x, t0, t1));
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
    lb.totals = (svc_tot, be_tot);
    t.ambiguous += std::mem::take(&mut lb.model.ambiguous);
    for (k, n) in std::mem::take(&mut lb.model.paths) {
        *t.paths.entry(k).or_default() += n;
    }
}

/// The NodePort counters summed over the CPUs (empty for the edge LB).
fn np_counters(lb: &XdpLb) -> Vec<(u64, u64)> {
    let Some(m) = &lb.np_stats else {
        return Vec::new();
    };
    (0..m.len())
        .map(|i| {
            m.get(&i, 0)
                .expect("NodePort stats")
                .iter()
                .fold((0, 0), |a, c| (a.0 + c.packets, a.1 + c.bytes))
        })
        .collect()
}

/// Compares the affinity entries the model expects with the kernel's, then takes the kernel's.
fn affinity(lb: &mut XdpLb, x: &super::model::Expect, t0: u64, t1: u64) -> Vec<String> {
    let (Some(m), Some(pod)) = (&lb.aff, lb.model.pod.as_mut()) else {
        return Vec::new();
    };
    let mut bad = Vec::new();
    for (k, w) in &x.aff {
        let g = m.get(k, 0).ok();
        let same = match (w, &g) {
            (None, None) => true,
            (Some(w), Some(g)) => {
                w.backend_id == g.backend_id
                    && (w.last_used_ns == g.last_used_ns
                        || (w.last_used_ns == super::model::NOW
                            && (t0..=t1).contains(&g.last_used_ns)))
            }
            _ => false,
        };
        if !same {
            bad.push(format!("affinity {k:?}\n   got   {g:?}\n   model {w:?}"));
        }
        match g {
            Some(g) => pod.aff.insert(*k, g),
            None => pod.aff.remove(k),
        };
    }
    bad
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
