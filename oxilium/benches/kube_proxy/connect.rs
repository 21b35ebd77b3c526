//! Part 1: connect() latency to a ClusterIP under kube-proxy's iptables rules and under the
//! socket LB, against a direct connect, measured by client processes (this binary re-executed).
use super::*;

/// A plain TCP accept loop on 0.0.0.0:8080 inside a namespace (accepts and closes).
pub(crate) struct Acceptor {
    fd: RawFd,
    handle: Option<JoinHandle<()>>,
}

impl Acceptor {
    pub(crate) fn start(ns: &Netns) -> Acceptor {
        let path = ns.path();
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            netns::enter(&path);
            let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, BE_PORT)).expect("bind :8080");
            // A deep accept queue: a full one drops SYNs, and the client waits 1 s to retry.
            // SAFETY: listen(2) again on a listening socket only resizes its queue.
            unsafe { libc::listen(l.as_raw_fd(), 4096) };
            tx.send(l.as_raw_fd()).unwrap();
            loop {
                match l.accept() {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break, // shut down
                }
            }
        });
        let fd = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("accept loop");
        Acceptor {
            fd,
            handle: Some(handle),
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        // SAFETY: shutdown(2) of the listener the thread still owns wakes its accept().
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A namespace configured like a node without a way out: lo up, `eth0` (a veth whose peer is a
/// dead end) holding the default route, the live endpoints' addresses on lo.
pub(crate) fn node(tag: &str, live: &[Ipv4Addr]) -> Netns {
    let ns = Netns::new(&unique(tag));
    for cmd in [
        "ip link add eth0 type veth peer name eth0p",
        "ip link set eth0 up",
        "ip link set eth0p up",
        "ip addr add 192.168.0.1/24 dev eth0",
        "ip route add default via 192.168.0.254 dev eth0 onlink",
    ] {
        ns.run(&cmd.split_whitespace().collect::<Vec<_>>());
    }
    for ip in live {
        ns.run(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "lo"]);
    }
    ns
}

/// The sockaddr of `to`.
pub(crate) fn sockaddr(to: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// A new blocking TCP socket (of the calling process's cgroup).
pub(crate) fn socket() -> RawFd {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    fd
}

/// connect(2) of `fd` to `sa`, timed alone; exits the process on failure.
pub(crate) fn timed_connect(fd: RawFd, sa: &libc::sockaddr_in) -> Duration {
    let t = Instant::now();
    // SAFETY: a socket this process owns, a valid address of the given size.
    let rc = unsafe {
        libc::connect(
            fd,
            (sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let dt = t.elapsed();
    if rc != 0 {
        eprintln!("connect: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    dt
}

/// Closes `fd` with an RST (SO_LINGER 0): no TIME_WAIT left behind.
pub(crate) fn close_rst(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a socket this process owns; valid pointer and size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
        libc::close(fd);
    }
}

/// Moves the calling process into the cgroup folder `cg`.
pub(crate) fn join_cgroup(cg: &str) {
    std::fs::write(
        PathBuf::from(cg).join("cgroup.procs"),
        std::process::id().to_string(),
    )
    .expect("joining the cgroup");
}

/// The client process (this binary re-executed): joins the cgroup, then the namespace, then
/// prints the duration of each connect() in ns, one a line.
pub(crate) fn client(args: &[String]) {
    let [cg, ns, to, count, warmup] = args else {
        panic!("client arguments: {args:?}");
    };
    join_cgroup(cg);
    netns::enter(ns); // this process has one thread
    let sa = sockaddr(to.parse().unwrap());
    let (count, warmup): (usize, usize) = (count.parse().unwrap(), warmup.parse().unwrap());
    let mut out = String::with_capacity(count * 8);
    for k in 0..warmup + count {
        let fd = socket();
        let dt = timed_connect(fd, &sa);
        close_rst(fd);
        if k >= warmup {
            let _ = writeln!(out, "{}", dt.as_nanos());
        }
    }
    print!("{out}");
}

/// Median and p99 of one case, in µs.
#[derive(Clone, Copy)]
pub(crate) struct Latency {
    pub(crate) median: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

impl Latency {
    /// Of a sample of durations in ns.
    pub(crate) fn of(mut v: Vec<u64>) -> Latency {
        v.sort_unstable();
        let us = |i: usize| v[i.min(v.len() - 1)] as f64 / 1000.0;
        Latency {
            median: us(v.len() / 2),
            p99: us(v.len() * 99 / 100),
            max: us(v.len() - 1),
        }
    }
}

/// Runs the client in `ns` (and `cgroup`) against `to`; the connect latencies.
fn measure(ns: &Netns, cgroup: &Cgroup, to: SocketAddrV4, count: usize) -> Latency {
    let cg = cgroup.path.display().to_string();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            CLIENT_FLAG,
            &cg,
            &ns.path(),
            &to.to_string(),
            &count.to_string(),
            &WARMUP.to_string(),
        ])
        .output()
        .expect("spawning the client");
    assert!(
        out.status.success(),
        "client to {to} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(v.len(), count, "one figure per connect");
    Latency::of(v)
}

/// What both parts measure with: the two namespaces and the clients' cgroups.
pub(crate) struct Run<'a> {
    pub(crate) started: Instant,
    /// (services, the middle one, the last one) of each size.
    pub(crate) probes: &'a [(usize, usize, usize)],
    /// Where kube-proxy's rules are loaded, and where the socket LB translates.
    pub(crate) ipt: &'a Netns,
    pub(crate) lb: &'a Netns,
    /// The socket LB's cgroup, and a sibling without programs (baseline and iptables clients).
    pub(crate) cg: &'a Cgroup,
    pub(crate) plain_cg: &'a Cgroup,
    pub(crate) connects: usize,
}

/// For each size: the services loaded both ways, then the connect latencies of every case.
/// `translated` reads the socket LB's connect counter. Returns the initial iptables loads
/// (services, lines, time).
pub(crate) fn connect_latencies(
    run: &Run,
    rec: &mut Reconciler<Counted>,
    translated: &dyn Fn() -> u64,
) -> Vec<(usize, usize, Duration)> {
    let Run {
        started,
        ipt,
        lb,
        cg,
        plain_cg,
        connects,
        ..
    } = *run;
    let mut full_loads = Vec::new();
    for &(n, mid, last) in run.probes {
        let c = Cluster { n, changed: None };
        let text = full_nat(c);
        let lines = text.lines().count();
        let load = restore(ipt, &[], text);
        full_loads.push((n, lines, load));
        let t = Instant::now();
        let desired = compile::compile(&c.model()).unwrap();
        let compiled = t.elapsed();
        // 100 services through the agent's path; 10 000 in bulk (see `Counted`).
        let bulk = n > 1_000;
        if bulk {
            rec.datapath().bulk.replace(Some(Vec::new()));
        }
        let before = rec.datapath().ops;
        let t = Instant::now();
        let ch = rec.apply(&desired).expect("programming the services");
        rec.datapath().flush_bulk();
        let applied = t.elapsed();
        let ops = rec.datapath().ops.since(&before);
        let swaps = if bulk {
            format!(
                "{} selection-table swaps issued from 64 threads",
                ops.inner_maps
            )
        } else {
            format!(
                "{:.0} ms of it in {} selection-table swaps",
                ms(ops.table_time),
                ops.inner_maps
            )
        };
        println!(
            "\n{n} services [{:.0} s]: iptables-restore of {lines} lines {:.0} ms; oxilium compile \
             {:.1} ms + apply {:.0} ms{} ({} services, {} backends written; {swaps})",
            started.elapsed().as_secs_f64(),
            ms(load),
            ms(compiled),
            ms(applied),
            if bulk { " in bulk (bench setup)" } else { "" },
            ch.services_written,
            ch.backends_written,
        );
        let cip = |i| SocketAddrV4::new(cluster_ip(i), SVC_PORT);
        let direct = SocketAddrV4::new(c.endpoints(mid)[0], BE_PORT);
        let base = measure(lb, plain_cg, direct, connects);
        println!(
            "  {:<58} {:>9} {:>9} {:>8} {:>8} {:>9}",
            "case", "median µs", "p99 µs", "× med", "× p99", "max µs"
        );
        let row = |name: &str, l: Latency| {
            println!(
                "  {name:<58} {:>9.1} {:>9.1} {:>8.2} {:>8.2} {:>9.0}",
                l.median,
                l.p99,
                l.median / base.median,
                l.p99 / base.p99,
                l.max,
            )
        };
        row("baseline: direct to a backend, no rules, no programs", base);
        let before = translated();
        let cases = [
            (
                format!("iptables, ClusterIP #{mid} (middle of KUBE-SERVICES)"),
                ipt,
                plain_cg,
                cip(mid),
            ),
            (
                format!("oxilium socket LB, ClusterIP #{mid}"),
                lb,
                cg,
                cip(mid),
            ),
            (
                format!("iptables, ClusterIP #{last} (last of KUBE-SERVICES)"),
                ipt,
                plain_cg,
                cip(last),
            ),
            (
                format!("oxilium socket LB, ClusterIP #{last}"),
                lb,
                cg,
                cip(last),
            ),
            (
                "iptables, direct to a backend (no service matches)".to_string(),
                ipt,
                plain_cg,
                direct,
            ),
            (
                "oxilium socket LB, direct to a backend (no service)".to_string(),
                lb,
                cg,
                direct,
            ),
        ];
        for (name, ns, cgroup, to) in cases {
            row(&name, measure(ns, cgroup, to, connects));
        }
        assert_eq!(
            translated() - before,
            2 * (connects + WARMUP) as u64,
            "every socket-LB connect to a ClusterIP was translated (and no other)"
        );
        let before = translated();
        let [d, h, s] = measure_paired(lb, plain_cg, cg, direct, cip(mid), connects);
        assert_eq!(
            translated() - before,
            (connects + WARMUP) as u64,
            "every paired ClusterIP connect was translated (and no direct one)"
        );
        println!(
            "  paired in one client process (connects taking turns), × the paired direct connects:"
        );
        for (name, l) in [
            ("paired: direct to a backend".to_string(), d),
            (
                "paired: socket LB, direct to a backend (no service)".to_string(),
                h,
            ),
            (format!("paired: oxilium socket LB, ClusterIP #{mid}"), s),
        ] {
            println!(
                "  {name:<58} {:>9.1} {:>9.1} {:>8.2} {:>8.2} {:>9.0}",
                l.median,
                l.p99,
                l.median / d.median,
                l.p99 / d.p99,
                l.max,
            );
        }
    }
    full_loads
}
