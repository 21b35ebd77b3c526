//! NodePort on the external device `va`: NodeIP:30080 (SNAT) and NodeIP:30081 (DSR) with a
//! backend on another node, NodeIP:30082 with the server pod of this node as its backend,
//! NodeIP:30083 (SNAT) with a backend whose next hop has no neighbour entry (the route is there):
//! every run takes bpf_redirect_neigh, since a test run's redirect is never carried out.
use super::*;
use abi::{
    lb::reason,
    nodeport::{Endpoint, reason as np},
};
use common::{fd_of, run_out};

const SNAT_PORT: u16 = 30080;
const DSR_PORT: u16 = 30081;
const LOCAL_PORT: u16 = 30082;
const UNRESOLVED_PORT: u16 = 30083;
/// A backend on `va`'s network without a neighbour entry.
const UNRESOLVED: &str = "10.10.0.9:8080";

/// The server pod's MAC and its host veth's (`pw`) in the endpoint entry.
const POD_MAC: [u8; 6] = [2, 0, 0, 0, 0xa0, 2];
const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0xb0, 2];

pub fn services() -> Vec<Service> {
    let node = |port| SocketAddr::new(IpAddr::V4(NODE), port);
    let local = format!("{SERVER_POD}:{POD_PORT}");
    vec![
        service(
            "np-snat",
            node(SNAT_PORT),
            Scope::External,
            Mode::Snat,
            REMOTE,
        ),
        service("np-dsr", node(DSR_PORT), Scope::External, Mode::Dsr, REMOTE),
        service(
            "np-local",
            node(LOCAL_PORT),
            Scope::External,
            Mode::Snat,
            &local,
        ),
        service(
            "np-unresolved",
            node(UNRESOLVED_PORT),
            Scope::External,
            Mode::Snat,
            UNRESOLVED,
        ),
    ]
}

/// The client → NodeIP:`port` packet of flow `i` (clients in 172.16.0.0/12; `round` apart).
fn to_node(i: u32, round: u8, port: u16) -> Vec<u8> {
    let (c, sport) = client(i, [172, 16], round);
    frame(c, sport, NODE, port)
}

/// The reply to a translated packet `out` (Ethernet + IPv4 + TCP, as the program left it):
/// addresses and ports swapped.
fn reply_to(out: &[u8]) -> Vec<u8> {
    let a = |o: usize| Ipv4Addr::new(out[o], out[o + 1], out[o + 2], out[o + 3]);
    let p = |o: usize| u16::from_be_bytes([out[o], out[o + 1]]);
    frame(a(30), p(36), a(26), p(34))
}

pub fn bench(np: &mut NodePort, rec: &Reconciler<KernelMaps>, base: &Baselines, n: u32) {
    let pw = ifindex("pw");
    np.set_endpoint(
        IpAddr::V4(SERVER_POD),
        &Endpoint {
            ifindex: pw,
            flags: 0,
            mac: POD_MAC,
            node_mac: NODE_MAC,
        },
    )
    .expect("the local pod");
    let prog = |name: &str| {
        let p: &aya::programs::SchedClassifier = np.ebpf.program(name).unwrap().try_into().unwrap();
        fd_of(p.fd().unwrap())
    };
    let (ingress, egress) = (
        prog("oxilium_nodeport_ingress"),
        prog("oxilium_nodeport_egress"),
    );
    let ctx = skb_ctx("va");
    let case = |name: &str, fd: i32, expect: u32, pkt: &dyn Fn(u32) -> Vec<u8>| {
        single::case(&[(fd, String::new())], base, &ctx, n, name, expect, pkt);
    };
    let redirect = TC_ACT_REDIRECT;
    let next = TCX_NEXT as u32;

    case("NodePort SNAT, new flow", ingress, redirect, &|i| {
        to_node(i, 0, SNAT_PORT)
    });
    case("NodePort SNAT, established flow", ingress, redirect, &|i| {
        to_node(i, 0, SNAT_PORT)
    });
    // The backend's replies: to the node's address and the SNAT port each flow was given.
    let replies: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let (action, _, out) = run_out(ingress, &to_node(i, 0, SNAT_PORT), &ctx);
            assert_eq!(action, redirect);
            reply_to(&out)
        })
        .collect();
    case("NodePort SNAT, backend's reply", ingress, redirect, &|i| {
        replies[i as usize].clone()
    });
    case(
        "NodePort SNAT, no neighbour yet, new flow",
        ingress,
        redirect,
        &|i| to_node(i, 3, UNRESOLVED_PORT),
    );
    case(
        "NodePort SNAT, no neighbour yet, established",
        ingress,
        redirect,
        &|i| to_node(i, 3, UNRESOLVED_PORT),
    );
    case(
        "NodePort DSR (IP-in-IP), new flow",
        ingress,
        redirect,
        &|i| to_node(i, 1, DSR_PORT),
    );
    case(
        "NodePort DSR (IP-in-IP), established flow",
        ingress,
        redirect,
        &|i| to_node(i, 1, DSR_PORT),
    );
    case(
        "NodePort to a local pod, new flow",
        ingress,
        redirect,
        &|i| to_node(i, 2, LOCAL_PORT),
    );
    case(
        "NodePort to a local pod, established flow",
        ingress,
        redirect,
        &|i| to_node(i, 2, LOCAL_PORT),
    );
    // The pod's replies, at the external device's egress: the frontend restored.
    let replies: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let (c, sport) = client(i, [172, 16], 2);
            frame(SERVER_POD, POD_PORT, c, sport)
        })
        .collect();
    case("NodePort, local pod's reply (egress)", egress, next, &|i| {
        replies[i as usize].clone()
    });
    // Every run above took the path its row names.
    let n = u64::from(n);
    for (r, runs, what) in [
        (np::REMOTE, 5 * n, "SNAT'ed to the remote backends"),
        (np::REV_SNAT, n, "remote replies restored"),
        (np::DSR, 2 * n, "tunnelled (DSR)"),
        (np::LOCAL, 2 * n, "to the local pod"),
        (np::REV_DNAT, n, "local replies restored"),
    ] {
        assert_eq!(np.counter(r).packets, runs, "{what}");
    }
    let neigh = rec
        .datapath()
        .reason_counter(reason::NEIGH_REDIRECT)
        .packets;
    assert_eq!(
        neigh,
        2 * n,
        "bpf_redirect_neigh for the unresolved next hop"
    );
}
