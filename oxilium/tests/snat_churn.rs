//! Connection lifecycle through the edge LB's SNAT, end to end with the real agent: many short
//! connections (connect, then RST) from one client never run out of SNAT ports, closed flows free
//! their port, an established idle flow keeps it for its (configured) timeout, and one past it
//! gives it up. Also prints the new-connection rate through SNAT against a direct connection
//! (docs/benchmarks.md): `OXILIUM_CHURN=200000 cargo test -p oxilium --test snat_churn -- --nocapture`.
//! Kernel features: network namespaces, veth, native XDP on veth (XDP_TX / XDP_REDIRECT),
//! bpf_fib_lookup, BTF maps, LRU hash, bpffs pinning. Requires root; fails when it cannot set up.
mod support;

use std::time::Duration;
use support::{
    churn::{Sink, churn, count},
    servers::{Conn, tcp_request},
    topology::{Bed, VIP4, backend4, sa},
};

const PORT: u16 = 8080;
/// Longer than the first SYN retransmission (1 s): a packet lost on the test's veths is retried as
/// a real client does; a SYN the LB drops for want of a port is counted by `snat_exhausted`.
const CONNECT: Duration = Duration::from_secs(3);

fn one_service(snat: &str, conntrack: &str) -> String {
    format!(
        "{snat}{conntrack}services:\n  - name: web\n    vip: {VIP4}\n    port: {PORT}\n    mode: snat\n    table_size: 251\n    backends:\n      - address: {}\n",
        backend4(1)
    )
}

fn counter(bed: &Bed, name: &str) -> u64 {
    bed.agent.cli(&["status"])["counters"][name]["packets"]
        .as_u64()
        .unwrap()
}

/// The reproduction of the port leak: sequential connect + RST from one client whose ports span
/// 1024-65535, through a one-backend SNAT service, many times the SNAT range (the automatic one:
/// below the LB namespace's ip_local_port_range, set to 10000-65535 here so the range is 8976
/// ports). No connection may fail and no SYN may be dropped for want of a port.
#[test]
fn short_connections_never_exhaust_snat_ports() {
    let mut bed = Bed::new(1);
    bed.client
        .run(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"]);
    bed.lb
        .run(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 65535"]);
    let _sink = Sink::start(&bed.backends[0], sa(&backend4(1).to_string(), PORT));
    bed.write_config(&one_service("", ""));
    bed.agent.start();
    let n = count(20_000);
    let r = churn(&bed.client, sa(VIP4, PORT), n, CONNECT);
    let status = bed.agent.cli(&["status"]);
    let mut states = std::collections::BTreeMap::<String, usize>::new();
    for s in conntrack_state(&bed) {
        *states.entry(s).or_default() += 1;
    }
    println!("conntrack states after the run: {states:?}");
    let exhausted = counter(&bed, "snat_exhausted");
    let reused = counter(&bed, "snat_reuse");
    println!(
        "through SNAT: {} ok, {} failed in {:.1?} ({:.0} conn/s); snat_exhausted {exhausted}, snat_reuse {reused}; maps {}",
        r.ok,
        r.failed,
        r.elapsed,
        r.rate(),
        status["maps"]
    );
    assert_eq!(
        (r.failed, exhausted),
        (0, 0),
        "{:?} at {:?}\n{status:#}\n{}",
        r.first_error,
        r.failures,
        bed.agent.log()
    );
    assert!(
        reused > 0,
        "{n} connections over 8976 ports must reuse some: {status:#}"
    );
    // The same client, directly to the backend (routed by the LB box's kernel, XDP passes it).
    let m = n.min(5_000);
    let d = churn(&bed.client, sa(&backend4(1).to_string(), PORT), m, CONNECT);
    assert_eq!(d.failed, 0, "{:?}", d.first_error);
    let s = churn(&bed.client, sa(VIP4, PORT), m, CONNECT);
    assert_eq!(s.failed, 0, "{:?}", s.first_error);
    println!(
        "new connections/s, same run, {m} each: direct {:.0}, through SNAT {:.0}, ratio {:.3}",
        d.rate(),
        s.rate(),
        s.rate() / d.rate()
    );
}

fn conntrack_state(bed: &Bed) -> Vec<String> {
    bed.agent
        .cli(&["ct", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap().to_string())
        .collect()
}

/// Map sizes from the file. One SNAT port (40000) shows who holds it: an established flow keeps it while younger than
/// `tcp_established` (a short one, 2s, then a long one, 1h, after a reload: the flow outlives the
/// old fixed 300 s in kind), a flow past it gives it up, and a RST frees it within a second.
#[test]
fn closed_and_expired_flows_free_their_port_established_ones_keep_it() {
    let mut bed = Bed::new(1);
    bed.serve(PORT, false);
    let snat = "snat:\n  ports: 40000-40000\n  max_entries: 2048\n";
    let short = "conntrack:\n  max_entries: 4096\n  timeouts:\n    tcp_established: 2s\n";
    bed.write_config(&one_service(snat, short));
    bed.agent.start();
    let vip = sa(VIP4, PORT);
    // The map sizes of the file were set before the maps were created.
    let maps = &bed.agent.cli(&["status"])["maps"];
    assert_eq!(maps["conntrack"]["max_entries"], 4096, "{maps}");
    assert_eq!(maps["snat"]["max_entries"], 2048, "{maps}");

    let mut a = Conn::open(&bed.client, vip);
    assert_eq!(a.ask("a").unwrap(), "b1");
    assert_eq!(conntrack_state(&bed), ["established"]);
    // The only port is taken: a second client's SYN is dropped.
    assert!(tcp_request(&bed.client, vip).is_err());
    assert!(counter(&bed, "snat_exhausted") > 0);
    // Idle past tcp_established: the port goes to the next flow.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(tcp_request(&bed.client, vip).unwrap(), "b1");
    assert_eq!(counter(&bed, "snat_reuse"), 1);
    drop(a);

    // A long established timeout: the idle flow keeps its port and its backend.
    let long = "conntrack:\n  max_entries: 4096\n  timeouts:\n    tcp_established: 1h\n";
    bed.write_config(&one_service(snat, long));
    bed.eventually(10, "reload", || {
        bed.agent.cli(&["status"])["reloads"].as_u64() == Some(1)
    });
    // The earlier flows are closed or expired by now (FIN close after the request, RST drop).
    std::thread::sleep(Duration::from_millis(1100));
    let mut c = Conn::open(&bed.client, vip);
    assert_eq!(c.ask("c").unwrap(), "b1");
    std::thread::sleep(Duration::from_millis(3000));
    assert!(
        tcp_request(&bed.client, vip).is_err(),
        "port must stay with the idle flow"
    );
    assert_eq!(c.ask("still").unwrap(), "b1");

    // RST: the flow is closed at once and its port free a second later.
    c.reset();
    bed.eventually(5, "closed", || {
        conntrack_state(&bed).contains(&"closed".to_string())
    });
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(tcp_request(&bed.client, vip).unwrap(), "b1");
}
