//! kube-proxy's iptables-mode nat table for the benchmark's services, and its restores.
use super::*;

pub(crate) fn svc_name(i: usize) -> String {
    format!("bench/svc-{i}:http")
}

/// kube-proxy names its chains with a hash of the service port name (and endpoint): 16 characters.
pub(crate) fn chain(prefix: &str, what: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in what.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("KUBE-{prefix}-{h:016X}")
}

pub(crate) fn svc_chain(i: usize) -> String {
    chain("SVC", &svc_name(i))
}

pub(crate) fn sep_chain(i: usize, ep: Ipv4Addr) -> String {
    chain("SEP", &format!("{}{ep}:{BE_PORT}", svc_name(i)))
}

/// KUBE-SERVICES: one rule per service, then the node-port catch-all, as kube-proxy orders it.
pub(crate) fn kube_services(out: &mut String, n: usize) {
    for i in 0..n {
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{} cluster IP\" -m tcp --dport {SVC_PORT} -j {}",
            cluster_ip(i),
            svc_name(i),
            svc_chain(i)
        );
    }
    out.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
}

/// The KUBE-SVC chain of service `i` and its KUBE-SEP chains: chain declarations go to `decl`
/// (a declaration flushes the chain in a `--noflush` restore), rules to `rules`.
pub(crate) fn service_chains(decl: &mut String, rules: &mut String, i: usize, eps: &[Ipv4Addr]) {
    let (name, svc) = (svc_name(i), svc_chain(i));
    let _ = writeln!(decl, ":{svc} - [0:0]");
    let _ = writeln!(
        rules,
        "-A {svc} ! -s 10.244.0.0/16 -d {}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {SVC_PORT} -j KUBE-MARK-MASQ",
        cluster_ip(i)
    );
    for (j, ep) in eps.iter().enumerate() {
        let sep = sep_chain(i, *ep);
        let left = eps.len() - j;
        let stat = if left > 1 {
            format!(
                "-m statistic --mode random --probability {:.11} ",
                1.0 / left as f64
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            rules,
            "-A {svc} -m comment --comment \"{name} -> {ep}:{BE_PORT}\" {stat}-j {sep}"
        );
    }
    for ep in eps {
        let sep = sep_chain(i, *ep);
        let _ = writeln!(decl, ":{sep} - [0:0]");
        let _ = writeln!(
            rules,
            "-A {sep} -s {ep}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ"
        );
        let _ = writeln!(
            rules,
            "-A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {ep}:{BE_PORT}"
        );
    }
}

/// The whole nat table, as kube-proxy regenerates it on a full sync.
pub(crate) fn full_nat(c: Cluster) -> String {
    let mut decl = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n\
         :KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    let mut rules = String::from(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    kube_services(&mut rules, c.n);
    for i in 0..c.n {
        service_chains(&mut decl, &mut rules, i, &c.endpoints(i));
    }
    decl + &rules + "COMMIT\n"
}

/// A `--noflush` restore from `from` to `to` (same services, one changed): the changed service's
/// chains, the stale KUBE-SEP chain flushed and deleted, and with `services` KUBE-SERVICES too.
pub(crate) fn partial_nat(from: Cluster, to: Cluster, services: bool) -> String {
    let i = to.changed.or(from.changed).expect("a changed service");
    let (old, new) = (from.endpoints(i), to.endpoints(i));
    let mut decl = String::from("*nat\n");
    let mut rules = String::new();
    if services {
        decl.push_str(":KUBE-SERVICES - [0:0]\n");
        kube_services(&mut rules, to.n);
    }
    service_chains(&mut decl, &mut rules, i, &new);
    let mut deletes = String::new();
    for ep in old.iter().filter(|e| !new.contains(e)) {
        let _ = writeln!(decl, ":{} - [0:0]", sep_chain(i, *ep));
        let _ = writeln!(deletes, "-X {}", sep_chain(i, *ep));
    }
    decl + &rules + &deletes + "COMMIT\n"
}

/// Runs `iptables-restore args < input` inside `ns` (from a thread there, as kube-proxy execs it
/// from its own namespace); returns the wall time from spawn to exit.
pub(crate) fn restore(ns: &Netns, args: &[&str], input: String) -> Duration {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    ns.exec(move || {
        let t = Instant::now();
        let mut child = Command::new("iptables-restore")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning iptables-restore");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .expect("feeding iptables-restore");
        let out = child.wait_with_output().unwrap();
        let dt = t.elapsed();
        assert!(
            out.status.success(),
            "iptables-restore {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dt
    })
}

// ---------------------------------------------------------------- the socket LB
