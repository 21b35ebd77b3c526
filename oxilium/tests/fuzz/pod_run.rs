//! The pod programs (`oxilium_pod_ingress` / `_egress`) under the fuzzer: the tc object loaded
//! with its maps pinned, the socket LB's object over the same pins (its affinity maps, so that
//! the reconciler can program ClientIP affinity as the agent does), services of
//! `SCOPE_INTERNAL` through model → compile → Reconciler; each frame through the ingress program
//! (leaving a pod) or the egress one (to a pod), compared with the model in its pod mode, the
//! affinity entries included.
use super::pod::PodConf;
use super::xdp_run::{Pinned, XdpLb, read_model};
use crate::bpffs::PinDir;
use crate::xdp_lb::{ThreadNetns, compile, loader, unique};
use abi::lb::LbConfig;
use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use aya::programs::SchedClassifier;
use lb::{model::Model, reconcile::Reconciler};
use oxilium::bpf::{lb_maps::KernelMaps, objects, socklb::SockLb};

pub fn pods(m: &Model, cfg: LbConfig) -> XdpLb {
    let ns = ThreadNetns::fresh();
    let dir = PinDir::new(&unique("fuzz-pod"));
    let mut ebpf = loader::load_pinned(objects::tc(), dir.path()).expect("the tc object");
    for name in ["oxilium_pod_ingress", "oxilium_pod_egress"] {
        let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
        p.load().expect("verifying the pod programs");
    }
    let (sock, sock_maps) = SockLb::load(dir.path())
        .expect("the socket LB")
        .into_parts();
    let mut maps = KernelMaps::from_ebpf(&mut ebpf)
        .expect("LB maps")
        .with_sock_maps(sock_maps);
    maps.set_config(&cfg).expect("config");
    let mut rec = Reconciler::open(maps).expect("reconciler");
    rec.apply(&compile::compile(m).expect("compile"))
        .expect("apply");
    let mut model = read_model(rec.datapath(), cfg);
    let mut conf = PodConf::default();
    for s in &m.services {
        if let Some(t) = s.affinity_timeout_s {
            let proto = if s.frontend.protocol == lb::model::Protocol::Udp {
                17
            } else {
                6
            };
            let k = abi::lb::ServiceKey {
                addr: compile::addr_bytes(s.frontend.addr),
                port: s.frontend.port.to_be(),
                proto,
                scope: abi::sock::SCOPE_INTERNAL,
            };
            let id = model.services[&k].id;
            conf.timeouts.insert(id, t);
        }
    }
    model.pod = Some(conf);
    let pin = |n: &str| MapData::from_pin(dir.path().join(n)).expect("pinned map");
    let stats = PerCpuArray::try_from(Map::PerCpuArray(pin(abi::sock::pod::names::STATS))).unwrap();
    let aff = HashMap::try_from(Map::LruHashMap(pin(abi::sock::names::AFFINITY))).unwrap();
    let pins = Pinned::open(dir.path());
    XdpLb {
        totals: Default::default(),
        prog: "pod",
        np_stats: Some(stats),
        aff: Some(aff),
        _sock: Some(sock),
        ebpf,
        rec,
        pins,
        model,
        np: None,
        _dir: dir,
        _ns: ns,
    }
}
