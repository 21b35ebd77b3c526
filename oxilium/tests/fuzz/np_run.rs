//! The NodePort acceleration (`oxilium_nodeport_xdp`) under the fuzzer: the tc object loaded as
//! the node agent loads it (`NodePort::load`, no device) and the XDP object over the same pins,
//! services and backends through the real path (model → compile → Reconciler), pods of this node
//! and loadBalancerSourceRanges written with `NodePort::set_endpoint` / `set_source_ranges`; then
//! the edge LB's fuzz loop ([`super::xdp_run::fuzz`]) with the model in its NodePort mode.
use super::np_xdp::NpConf;
use super::xdp_lb::skey;
use super::xdp_run::{Pinned, XdpLb, mtu_netns, read_model};
use crate::bpffs::PinDir;
use crate::xdp_lb::{ThreadNetns, XdpMode, compile, loader, unique};
use abi::lb::LbConfig;
use abi::nodeport::Endpoint;
use aya::maps::{Map, MapData, PerCpuArray};
use aya::programs::Xdp;
use lb::{model::Model, reconcile::Reconciler};
use oxilium::bpf::nodeport::NodePort;
use std::net::IpAddr;

/// `prog`: `oxilium_nodeport_xdp`, or "tc" for the ingress and egress programs (the model in
/// its tc mode).
pub fn nodeport(
    m: &Model,
    cfg: LbConfig,
    mtu: (u32, u32),
    local: &[IpAddr],
    prog: &'static str,
) -> XdpLb {
    let setup = mtu_netns(mtu);
    let ns = ThreadNetns::named(&setup.iter().map(String::as_str).collect::<Vec<_>>());
    let dir = PinDir::new(&unique("fuzz-np"));
    let mut np = NodePort::load(dir.path(), &[], false).expect("loading the NodePort tc object");
    let mut ebpf = loader::load_xdp_object(dir.path(), XdpMode::default()).expect("XDP object");
    let xdp: &mut Xdp = ebpf
        .program_mut("oxilium_nodeport_xdp")
        .unwrap()
        .try_into()
        .unwrap();
    xdp.load().expect("verifying oxilium_nodeport_xdp");
    let mut maps = np.lb_maps().expect("LB maps");
    maps.set_config(&cfg).expect("config");
    let mut rec = Reconciler::open(maps).expect("reconciler");
    rec.apply(&compile::compile(m).expect("compile"))
        .expect("apply");
    let mut model = read_model(rec.datapath(), cfg);
    let mut conf = NpConf::default();
    for (i, a) in local.iter().enumerate() {
        let ep = Endpoint {
            ifindex: 100 + i as u32,
            flags: 0,
            mac: [2, 0, 0, 0, 0xa0, i as u8],
            node_mac: [2, 0, 0, 0, 0xb0, i as u8],
        };
        np.set_endpoint(*a, &ep).expect("endpoint");
        conf.endpoints
            .insert(compile::addr_bytes(*a), (ep.mac, ep.node_mac));
    }
    for s in m.services.iter().filter(|s| !s.source_ranges.is_empty()) {
        let proto = if s.frontend.protocol == lb::model::Protocol::Udp {
            17
        } else {
            6
        };
        let id =
            model.services[&skey(compile::addr_bytes(s.frontend.addr), s.frontend.port, proto)].id;
        np.set_source_ranges(id, &s.source_ranges)
            .expect("source ranges");
        conf.ranges.insert(id, s.source_ranges.clone());
    }
    model.np = Some(conf);
    if prog == "tc" {
        model.tc = Some(true);
    }
    model.route_mtu = mtu;
    let data = MapData::from_pin(dir.path().join(abi::nodeport::names::STATS)).expect("np stats");
    let np_stats = PerCpuArray::try_from(Map::PerCpuArray(data)).unwrap();
    let pins = Pinned::open(dir.path());
    XdpLb {
        totals: Default::default(),
        prog,
        np_stats: Some(np_stats),
        aff: None,
        _sock: None,
        ebpf,
        rec,
        pins,
        model,
        np: Some(np),
        _dir: dir,
        _ns: ns,
    }
}
