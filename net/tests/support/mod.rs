//! Network namespaces made by a test and always removed: `ip netns add`, `ip -n` commands, and
//! async code run on a thread that entered the namespace (setns), so that the test never sees
//! the host's interfaces. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and `ip` (iproute2).
use nix::sched::{CloneFlags, setns};
use std::{
    fs::File,
    future::Future,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A namespace of this test, deleted on drop (its devices go with it), also when the test panics.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace, unique to this process and call, with loopback up and no other device.
    pub fn new(tag: &str) -> Netns {
        let name = format!(
            "oxnet{}{tag}{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip("link set lo up");
        ns
    }

    /// `ip -n NAME ARGS`; panics with its output if it fails.
    pub fn ip(&self, args: &str) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend(args.split_whitespace());
        run(&all)
    }

    /// Runs `f`'s future to completion on a new thread inside the namespace (a current-thread
    /// tokio runtime: netlink sockets opened there belong to the namespace). A panic inside is
    /// the caller's panic.
    pub fn block_on<F, Fut>(&self, f: F) -> Fut::Output
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future,
        Fut::Output: Send,
    {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(move || {
                let fd = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                setns(fd, CloneFlags::CLONE_NEWNET).expect("setns (are we root?)");
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs a command; panics with its output if it fails; returns its standard output.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e} (iproute2 installed?)"));
    assert!(
        out.status.success(),
        "{args:?} failed (root?): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pair of namespaces joined by a veth: `a0` in `a` (02:00:00:00:00:a0, 10.2.0.1/24,
/// fd02::1/64) and `b0` in `b` (02:00:00:00:00:b0, 10.2.0.2/24, fd02::2/64), both up, IPv6
/// without duplicate address detection (usable at once).
pub struct Pair {
    pub a: Netns,
    pub b: Netns,
}

pub const A_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xa0];
pub const B_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xb0];

impl Pair {
    pub fn new() -> Pair {
        let a = Netns::new("a");
        let b = Netns::new("b");
        a.ip(&format!(
            "link add a0 address 02:00:00:00:00:a0 type veth peer name b0 address 02:00:00:00:00:b0 netns {}",
            b.name
        ));
        for (ns, dev, n) in [(&a, "a0", 1), (&b, "b0", 2)] {
            ns.ip(&format!("addr add 10.2.0.{n}/24 dev {dev}"));
            ns.ip(&format!("addr add fd02::{n}/64 dev {dev} nodad"));
            ns.ip(&format!("link set {dev} up"));
        }
        Pair { a, b }
    }
}
