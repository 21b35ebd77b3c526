//! The DNS proxy with a real client (`dig`, Debian dnsutils) and a DNS server run by the test, in
//! test-made network namespaces.
//!
//! `proxy_with_dig`: the proxy in-process over the policy engine (no BPF): allowed names are
//! forwarded over UDP and TCP, CNAME chains learnt, other names REFUSED without reaching the
//! server, the answer released only after the engine learnt its addresses, expiry after the TTL.
//! Kernel features: network namespaces, loopback.
//!
//! `to_fqdns_on_real_packets`: the agent (`--dns-proxy-address`) enforcing a toFQDNs policy on a
//! pod's real packets: the resolved address is unreachable before the answer, reachable by the
//! first SYN after it, a refused name's address stays unreachable, and the address is unreachable
//! again once its TTL (floored by `--tofqdns-min-ttl`) ran out. The pod sends DNS to the proxy's
//! address directly. Kernel features: network namespaces, veth, tc clsact BPF (the endpoint
//! programs), LPM trie and hash-of-maps BPF maps.
//!
//! `redirected_dns_with_dig`, `redirected_dns_fails_closed_without_proxy`,
//! `implicit_dns_rule_over_ipv6`: the pod sends DNS to the server's own address and the endpoint
//! programs redirect port 53 to the agent's DNS proxy (kernel features in each test's comment).
mod support;

use hickory_proto::rr::rdata::{A, CNAME};
use hickory_proto::rr::{Name, RData, Record};
use policy::api::Protocol;
use policy::dns::DnsVerdict;
use policy::mapstate::{Verdict, lookup};
use policy::rule::Direction;
use policy::{Config, EndpointSpec, Engine};
use proxy::dns::{DnsProxy, Learnt, Query, Transport};
use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use support::{
    dns_server::{DnsServer, Zone},
    netns::{Netns, enter, unique},
    policy_bed::{NODE_IP, PolicyNode, probe},
};

const ALLOWED_IP: &str = "192.0.2.80";
const DENIED_IP: &str = "192.0.2.81";
const SERVER: &str = "192.0.2.53";

fn zone(ttl: u32) -> Zone {
    let rec =
        |name: &str, data: RData| Record::from_rdata(Name::from_str(name).unwrap(), ttl, data);
    let a = |ip: &str| RData::A(A(ip.parse().unwrap()));
    let mut z = Zone::new();
    z.insert(
        "allowed.example".into(),
        vec![rec("allowed.example.", a(ALLOWED_IP))],
    );
    z.insert(
        "www.allowed.example".into(),
        vec![
            rec(
                "www.allowed.example.",
                RData::CNAME(CNAME(Name::from_str("allowed.example.").unwrap())),
            ),
            rec("allowed.example.", a(ALLOWED_IP)),
        ],
    );
    z.insert(
        "denied.example".into(),
        vec![rec("denied.example.", a(DENIED_IP))],
    );
    z
}

/// What `dig` printed.
struct Dig {
    /// None: no answer (timed out).
    status: Option<String>,
    /// The A records of the answer section.
    ips: Vec<String>,
    /// The `;; SERVER:` line's address (`ADDR#PORT`): where the answer came from.
    server: Option<String>,
    text: String,
}

/// `dig` in `ns`.
fn dig_at(ns: &Netns, server: &str, port: u16, name: &str, tcp: bool) -> Dig {
    let port = port.to_string();
    let at = format!("@{server}");
    let mut args = vec!["dig", &at, "-p", &port, name, "A", "+tries=1", "+time=2"];
    if tcp {
        args.push("+tcp");
    }
    let out = ns.command(&args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .map(str::to_string);
    let ips = text
        .split(";; ANSWER SECTION:\n")
        .nth(1)
        .map(|s| {
            s.lines()
                .take_while(|l| !l.is_empty())
                .filter(|l| l.contains("\tA\t"))
                .map(|l| l.rsplit('\t').next().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    let server = text
        .split(";; SERVER: ")
        .nth(1)
        .and_then(|s| s.split('(').next())
        .map(str::to_string);
    Dig {
        status,
        ips,
        server,
        text,
    }
}

/// `dig` in `ns` that must get an answer: (status, answer addresses).
fn dig(ns: &Netns, server: &str, port: u16, name: &str, tcp: bool) -> (String, Vec<String>) {
    let d = dig_at(ns, server, port, name, tcp);
    let status = d
        .status
        .unwrap_or_else(|| panic!("dig {name}: no status in {}", d.text));
    (status, d.ips)
}

fn cnp(egress: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: fqdn, namespace: default}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: client}}}}\n  egress:\n{egress}"
    )
}

const DNS_EGRESS: &str = "  - toCIDR: [192.0.2.53/32]\n    toPorts: [{ports: [{port: \"53\", protocol: ANY}], rules: {dns: [{matchName: allowed.example}, {matchPattern: \"*.allowed.example\"}]}}]\n  - toFQDNs: [{matchName: allowed.example}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n";

/// The engine behind the in-process proxy, with the time each answer's learning finished.
struct EnginePolicy {
    engine: Mutex<Engine>,
    learnt: Mutex<Vec<(Vec<String>, Instant)>>,
}

/// How long learning takes in the in-process test: the answer must wait for it.
const LEARN_DELAY: Duration = Duration::from_millis(300);

impl proxy::dns::Policy for EnginePolicy {
    async fn check(&self, q: &Query) -> proxy::dns::Verdict {
        let proto = if q.transport == Transport::Udp {
            Protocol::Udp
        } else {
            Protocol::Tcp
        };
        let e = self.engine.lock().unwrap();
        match e.dns_verdict(
            q.src.ip(),
            q.dst.ip(),
            proto,
            q.dst.port(),
            &q.question.name,
        ) {
            DnsVerdict::Allow => proxy::dns::Verdict::Allow,
            DnsVerdict::Refuse(w) => proxy::dns::Verdict::Refuse(w),
        }
    }

    async fn learn(&self, _: &Query, l: Learnt) {
        tokio::time::sleep(LEARN_DELAY).await;
        let mut e = self.engine.lock().unwrap();
        for n in &l.names {
            e.learn_fqdn(n, &l.ips, l.ttl, Instant::now());
        }
        self.learnt.lock().unwrap().push((l.names, Instant::now()));
    }
}

fn allows_8080(e: &Engine, ip: &str) -> bool {
    let ep = e.endpoint("default/client").unwrap();
    let (id, _) = e.identity_of_ip(ip.parse().unwrap());
    lookup(&ep.policy.map, id, Direction::Egress, Protocol::Tcp, 8080)
        .is_some_and(|(_, v)| v.verdict == Verdict::Allow)
}

#[test]
fn proxy_with_dig() {
    let ns = Netns::new(&unique("dns"));
    ns.run(&["ip", "addr", "add", &format!("{SERVER}/32"), "dev", "lo"]);
    let server = DnsServer::start(&ns, format!("{SERVER}:53").parse().unwrap(), zone(1));
    let mut engine = Engine::new(Config {
        fqdn_min_ttl: Duration::from_secs(1),
        ..Config::default()
    });
    engine.upsert_endpoint(EndpointSpec {
        namespace: "default".into(),
        name: "client".into(),
        labels: [("app".to_string(), "client".to_string())].into(),
        ips: vec!["127.0.0.1".parse().unwrap()],
        ..Default::default()
    });
    let objects =
        k8s::manifests::parse_text(std::path::Path::new("p.yaml"), &cnp(DNS_EGRESS)).unwrap();
    let m = policy::manifests::Manifests::from_objects(
        objects.into_iter().map(|o| (o.origin, o.value)),
        "default",
    )
    .unwrap();
    for (o, r) in m.policies {
        engine.upsert_policy(o, r);
    }
    assert!(!allows_8080(&engine, ALLOWED_IP));
    let pol = Arc::new(EnginePolicy {
        engine: Mutex::new(engine),
        learnt: Mutex::new(Vec::new()),
    });
    // The proxy on a thread inside the namespace.
    let (tx, rx) = std::sync::mpsc::channel();
    let (path, p) = (ns.path(), pol.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy_thread = std::thread::spawn(move || {
        enter(&path);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let cfg = proxy::dns::Config {
                listen: "127.0.0.1:0".parse().unwrap(),
                upstream: Some(format!("{SERVER}:53").parse().unwrap()),
                transparent: false,
                timeout: Duration::from_secs(2),
            };
            let px = DnsProxy::bind(cfg, p).unwrap();
            tx.send(px.local_addr()).unwrap();
            tokio::select! { _ = px.run() => {}, _ = stopped => {} }
        });
    });
    let addr: SocketAddr = rx.recv_timeout(Duration::from_secs(5)).unwrap();

    // UDP: allowed, and the answer came after the engine learnt the address.
    let t = Instant::now();
    let (status, ips) = dig(&ns, "127.0.0.1", addr.port(), "allowed.example", false);
    let answered = Instant::now();
    assert_eq!(
        (status.as_str(), ips.as_slice()),
        ("NOERROR", [ALLOWED_IP.to_string()].as_slice())
    );
    assert!(
        answered - t >= LEARN_DELAY,
        "the answer did not wait for the engine"
    );
    let learnt = pol.learnt.lock().unwrap().clone();
    assert_eq!(learnt.len(), 1);
    assert!(learnt[0].1 <= answered);
    assert!(allows_8080(&pol.engine.lock().unwrap(), ALLOWED_IP));

    // TCP, through a CNAME: both names learnt.
    let (status, ips) = dig(&ns, "127.0.0.1", addr.port(), "www.allowed.example", true);
    assert_eq!(
        (status.as_str(), ips.as_slice()),
        ("NOERROR", [ALLOWED_IP.to_string()].as_slice())
    );
    assert_eq!(
        pol.learnt.lock().unwrap()[1].0,
        ["www.allowed.example", "allowed.example"]
    );

    // Refused, over both transports, and never asked upstream.
    for tcp in [false, true] {
        let (status, ips) = dig(&ns, "127.0.0.1", addr.port(), "denied.example", tcp);
        assert_eq!(status, "REFUSED");
        assert!(ips.is_empty());
    }
    assert_eq!(server.asked(), ["allowed.example", "www.allowed.example"]);
    assert!(!allows_8080(&pol.engine.lock().unwrap(), DENIED_IP));

    // Expiry: TTL 1 s, min TTL 1 s.
    std::thread::sleep(Duration::from_millis(1100));
    let mut e = pol.engine.lock().unwrap();
    let up = e.expire_fqdn(Instant::now());
    assert_eq!(up.ipcache, [ALLOWED_IP.parse::<IpAddr>().unwrap()]);
    assert!(!allows_8080(&e, ALLOWED_IP));
    drop(e);
    let _ = stop.send(());
    proxy_thread.join().unwrap();
}

/// The agent (extra `flags`) with the pod `default/client` under the CNP `egress`, the DNS server
/// (TTL 1 s) at [`SERVER`] and web servers on port 8080 at [`ALLOWED_IP`] and [`DENIED_IP`], all
/// in the world namespace.
fn fqdn_node(tag: &str, egress: &str, flags: &[&str]) -> (PolicyNode, DnsServer) {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: default, labels: {app: client}}\n";
    let files = vec![
        ("pod.yaml".to_string(), pod.to_string()),
        ("cnp.yaml".to_string(), cnp(egress)),
    ];
    let mut bed = PolicyNode::new(tag, &files, flags);
    bed.add_pod("default/client");
    for ip in [SERVER, ALLOWED_IP, DENIED_IP] {
        bed.world_address(ip.parse().unwrap());
    }
    let dns = DnsServer::start(
        bed.world.as_ref().unwrap(),
        format!("{SERVER}:53").parse().unwrap(),
        zone(1),
    );
    for ip in [ALLOWED_IP, DENIED_IP] {
        bed.serve("world", "web", format!("{ip}:8080").parse().unwrap());
    }
    (bed, dns)
}

/// A TCP probe of `ip:8080` from the client pod: Ok(answering id).
fn web(bed: &PolicyNode, ip: &str) -> Result<String, String> {
    probe(
        &bed.pods["default/client"].ns.path(),
        format!("{ip}:8080").parse().unwrap(),
        false,
        Duration::from_millis(700),
    )
}

#[test]
fn to_fqdns_on_real_packets() {
    let proxy_port = 10053;
    let egress = format!(
        "{DNS_EGRESS}  - toEntities: [host]\n    toPorts: [{{ports: [{{port: \"{proxy_port}\", protocol: ANY}}]}}]\n"
    );
    let listen = format!("{NODE_IP}:{proxy_port}");
    let upstream = format!("{SERVER}:53");
    let (bed, _dns) = fqdn_node(
        "fq",
        &egress,
        &[
            "--dns-proxy-address",
            &listen,
            "--dns-proxy-upstream",
            &upstream,
            "--tofqdns-min-ttl",
            "2",
        ],
    );
    let web = |ip: &str| web(&bed, ip);
    let client = &bed.pods["default/client"].ns;

    assert!(web(ALLOWED_IP).is_err(), "reachable before any answer");
    let (status, ips) = dig(client, NODE_IP, proxy_port, "allowed.example", false);
    assert_eq!(
        (status.as_str(), ips.as_slice()),
        ("NOERROR", [ALLOWED_IP.to_string()].as_slice()),
        "{}",
        bed.agent.log()
    );
    // The first SYN right after the answer passes: the ipcache and the map were written first.
    assert_eq!(web(ALLOWED_IP).as_deref(), Ok("web"), "{}", bed.agent.log());

    let (status, _) = dig(client, NODE_IP, proxy_port, "denied.example", false);
    assert_eq!(status, "REFUSED");
    assert!(
        web(DENIED_IP).is_err(),
        "a refused name's address is reachable"
    );

    let (status, ips) = dig(client, NODE_IP, proxy_port, "allowed.example", true);
    assert_eq!((status.as_str(), ips.len()), ("NOERROR", 1));
    let learnt = Instant::now();
    assert_eq!(web(ALLOWED_IP).as_deref(), Ok("web"));

    // TTL 1 s floored to 2 s; the expiry task looks every 500 ms.
    std::thread::sleep(
        Duration::from_secs(2) + Duration::from_millis(800)
            - learnt.elapsed().min(Duration::from_secs(2)),
    );
    assert!(web(ALLOWED_IP).is_err(), "reachable after the TTL ran out");
}

/// The pod sends DNS to the server's own address; the endpoint program hands the UDP and TCP
/// port-53 flows that its DNS rule covers to the agent's DNS proxy, which checks the names, asks
/// the server the pod asked (no `--dns-proxy-upstream`), learns the answer and replies as that
/// server: `allowed.example` answered from `192.0.2.53#53`, `denied.example` REFUSED without
/// reaching the server, the allowed address reachable by its toFQDNs rule right after the answer,
/// the refused name's address not, and the allowed one unreachable again after its TTL.
///
/// Kernel features: network namespaces, veth, tc BPF (the endpoint programs),
/// `bpf_sk_lookup_udp` / `bpf_sk_lookup_tcp` + `bpf_sk_assign` at tc ingress (≥ 5.7),
/// `IP_TRANSPARENT` + `IP_RECVORIGDSTADDR` UDP and TCP listeners with `SO_MARK`, a transparent
/// UDP socket bound to a foreign address (the reply), fwmark policy routing with a `local` route.
#[test]
fn redirected_dns_with_dig() {
    let (bed, server) = fqdn_node("fr", DNS_EGRESS, &["--tofqdns-min-ttl", "2"]);
    let client = &bed.pods["default/client"].ns;
    assert!(
        web(&bed, ALLOWED_IP).is_err(),
        "reachable before any answer"
    );

    let d = dig_at(client, SERVER, 53, "allowed.example", false);
    assert_eq!(
        (d.status.as_deref(), d.ips.as_slice()),
        (Some("NOERROR"), [ALLOWED_IP.to_string()].as_slice()),
        "{}\n{}",
        d.text,
        bed.agent.log()
    );
    // dig accepts an answer only from the address it asked.
    assert_eq!(d.server.as_deref(), Some("192.0.2.53#53"));
    assert_eq!(web(&bed, ALLOWED_IP).as_deref(), Ok("web"));

    for tcp in [false, true] {
        let d = dig_at(client, SERVER, 53, "denied.example", tcp);
        assert_eq!(d.status.as_deref(), Some("REFUSED"), "{}", d.text);
        assert!(d.ips.is_empty());
    }
    assert!(
        web(&bed, DENIED_IP).is_err(),
        "a refused name's address is reachable"
    );

    let d = dig_at(client, SERVER, 53, "allowed.example", true);
    assert_eq!(
        (d.status.as_deref(), d.ips.len(), d.server.as_deref()),
        (Some("NOERROR"), 1, Some("192.0.2.53#53")),
        "{}",
        d.text
    );
    let learnt = Instant::now();
    // The server was asked the allowed name twice (UDP, TCP) and never the refused one.
    assert_eq!(server.asked(), ["allowed.example", "allowed.example"]);

    // TTL 1 s floored to 2 s; the expiry task looks every 500 ms.
    std::thread::sleep(
        Duration::from_secs(2) + Duration::from_millis(800)
            - learnt.elapsed().min(Duration::from_secs(2)),
    );
    assert!(
        web(&bed, ALLOWED_IP).is_err(),
        "reachable after the TTL ran out"
    );
}

/// With the proxies off (`--l7-proxy false`), port-53 flows under a DNS rule find no listener and
/// are dropped: no answer over UDP or TCP and nothing reaches the server, while a flow the policy
/// allows without a proxy passes.
///
/// Kernel features: network namespaces, veth, tc BPF (the endpoint programs),
/// `bpf_sk_lookup_udp` / `bpf_sk_lookup_tcp` at tc ingress.
#[test]
fn redirected_dns_fails_closed_without_proxy() {
    let egress = format!(
        "{DNS_EGRESS}  - toCIDR: [{DENIED_IP}/32]\n    toPorts: [{{ports: [{{port: \"8080\", protocol: TCP}}]}}]\n"
    );
    let (bed, server) = fqdn_node("fd", &egress, &["--l7-proxy", "false"]);
    let client = &bed.pods["default/client"].ns;
    assert_eq!(
        web(&bed, DENIED_IP).as_deref(),
        Ok("web"),
        "{}",
        bed.agent.log()
    );
    for tcp in [false, true] {
        let d = dig_at(client, SERVER, 53, "allowed.example", tcp);
        assert_eq!(d.status, None, "answered without the proxy: {}", d.text);
    }
    assert!(server.asked().is_empty(), "{:?}", server.asked());
}

/// IPv6, and the implicit DNS rule: a pod whose policy has `toFQDNs` and no DNS rule sends its
/// query over IPv6 to the cluster's DNS pod (`k8s-app: kube-dns` in `kube-system`, the server run
/// by the test in that pod); the endpoint program hands it to the DNS proxy's `[::1]` listeners,
/// which forward it to that pod and answer as it, over UDP and TCP; the answer's address becomes
/// reachable by the toFQDNs rule.
///
/// Kernel features: network namespaces, veth with IPv6, tc BPF (the endpoint programs),
/// `bpf_sk_lookup_udp` / `bpf_sk_lookup_tcp` with IPv6 tuples + `bpf_sk_assign` at tc ingress,
/// `IPV6_TRANSPARENT` + `IPV6_RECVORIGDSTADDR` listeners on `[::1]`, a transparent IPv6 UDP
/// socket bound to a foreign address, the IPv6 fwmark rule and `local ::/0` route.
#[test]
fn implicit_dns_rule_over_ipv6() {
    let files = vec![
        (
            "pods.yaml".to_string(),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: default, labels: {app: client}}\n\
             ---\napiVersion: v1\nkind: Pod\nmetadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}\n"
                .to_string(),
        ),
        (
            "cnp.yaml".to_string(),
            cnp("  - toFQDNs: [{matchName: allowed.example}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n"),
        ),
    ];
    let mut bed = PolicyNode::new("f6", &files, &["--pod-cidr", "fd00:250::/120"]);
    // The node's IPv6 address: the source of the proxy's queries to the DNS pod.
    bed.node
        .run(&["ip", "addr", "add", "fd00:200::1/128", "dev", "lo"]);
    bed.add_pod("default/client");
    bed.add_pod("kube-system/coredns");
    bed.world_address(ALLOWED_IP.parse().unwrap());
    bed.serve(
        "world",
        "web",
        format!("{ALLOWED_IP}:8080").parse().unwrap(),
    );
    bed.wait_ipv6_ready();
    let dns_ip = *bed.pods["kube-system/coredns"]
        .ips
        .iter()
        .find(|a| a.is_ipv6())
        .expect("an IPv6 pod address");
    let server = DnsServer::start(
        &bed.pods["kube-system/coredns"].ns,
        SocketAddr::new(dns_ip, 53),
        zone(60),
    );
    let client = &bed.pods["default/client"].ns;
    let dns = dns_ip.to_string();
    assert!(
        web(&bed, ALLOWED_IP).is_err(),
        "reachable before any answer"
    );
    for tcp in [false, true] {
        let d = dig_at(client, &dns, 53, "allowed.example", tcp);
        assert_eq!(
            (d.status.as_deref(), d.ips.as_slice()),
            (Some("NOERROR"), [ALLOWED_IP.to_string()].as_slice()),
            "{}\n{}",
            d.text,
            bed.agent.log()
        );
        assert_eq!(d.server, Some(format!("{dns}#53")));
    }
    assert_eq!(server.asked(), ["allowed.example", "allowed.example"]);
    // The proxy learnt the answer: its toFQDNs rule lets the pod in.
    assert_eq!(web(&bed, ALLOWED_IP).as_deref(), Ok("web"));
    // The implicit rule allows every name; the server's own REFUSED comes back unchanged.
    let d = dig_at(client, &dns, 53, "unknown.example", false);
    assert_eq!(d.status.as_deref(), Some("REFUSED"), "{}", d.text);
    assert_eq!(server.asked().len(), 3);
}
