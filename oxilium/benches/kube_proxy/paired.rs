//! Socket LB against a direct connect, paired: one client process makes a batch of sockets in the
//! cgroup without programs and two batches in the socket LB's cgroup (a socket belongs to the
//! cgroup of the process that made it), then connects them in turn — a direct connect to a
//! backend from the plain cgroup, a direct connect from the socket LB's cgroup (the hook runs,
//! no service matches), a connect to the ClusterIP, the order rotated every round — so that the
//! three samples come from the same moments of a shared machine. The separate cases of [`super::connect`] each run
//! a few seconds apart, and the machine's load moves their medians more than the socket LB does.
use super::*;

pub(crate) const PAIRED_FLAG: &str = "--oxilium-kube-proxy-paired";
/// Sockets made per cgroup and batch (well under the default limit of open files).
const BATCH: usize = 100;

/// The paired client (this binary re-executed): prints `<direct ns> <direct under the socket LB
/// ns> <ClusterIP ns>` per round.
pub(crate) fn paired_client(args: &[String]) {
    let [plain, lb_cg, ns, direct, cip, count, warmup] = args else {
        panic!("paired client arguments: {args:?}");
    };
    netns::enter(ns); // this process has one thread
    let (direct, cip) = (
        sockaddr(direct.parse().unwrap()),
        sockaddr(cip.parse().unwrap()),
    );
    let (count, warmup): (usize, usize) = (count.parse().unwrap(), warmup.parse().unwrap());
    let mut out = String::with_capacity(count * 16);
    let mut k = 0;
    while k < warmup + count {
        let n = BATCH.min(warmup + count - k);
        join_cgroup(plain);
        let a: Vec<RawFd> = (0..n).map(|_| socket()).collect();
        join_cgroup(lb_cg);
        let b: Vec<RawFd> = (0..n).map(|_| socket()).collect();
        let c: Vec<RawFd> = (0..n).map(|_| socket()).collect();
        for i in 0..n {
            let mut d = [Duration::ZERO; 3];
            for j in 0..3 {
                let which = (j + k + i) % 3;
                d[which] = match which {
                    0 => timed_connect(a[i], &direct),
                    1 => timed_connect(b[i], &direct),
                    _ => timed_connect(c[i], &cip),
                };
            }
            if k + i >= warmup {
                let [x, y, z] = d.map(|d| d.as_nanos());
                let _ = writeln!(out, "{x} {y} {z}");
            }
        }
        for fd in a.into_iter().chain(b).chain(c) {
            close_rst(fd);
        }
        k += n;
    }
    print!("{out}");
}

/// Runs the paired client in `ns`: the latencies of the direct connects (plain cgroup), of the
/// direct connects under the socket LB, of the ClusterIP connects.
pub(crate) fn measure_paired(
    ns: &Netns,
    plain: &Cgroup,
    lb_cg: &Cgroup,
    direct: SocketAddrV4,
    cip: SocketAddrV4,
    count: usize,
) -> [Latency; 3] {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            PAIRED_FLAG,
            &plain.path.display().to_string(),
            &lb_cg.path.display().to_string(),
            &ns.path(),
            &direct.to_string(),
            &cip.to_string(),
            &count.to_string(),
            &WARMUP.to_string(),
        ])
        .output()
        .expect("spawning the paired client");
    assert!(
        out.status.success(),
        "paired client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: [Vec<u64>; 3] = Default::default();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<u64> = l.split(' ').map(|x| x.parse().unwrap()).collect();
        assert_eq!(f.len(), 3, "three figures per round");
        for (s, x) in v.iter_mut().zip(f) {
            s.push(x);
        }
    }
    assert_eq!(v[0].len(), count, "one round per connect");
    v.map(Latency::of)
}
