//! Network namespaces made by a test and always removed: `ip netns add`, commands and threads
//! inside them (nsenter / setns), deletion on drop.
use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (interface and netns names stay short).
pub fn unique(tag: &str) -> String {
    format!(
        "ox{}{}{}",
        std::process::id() % 100_000,
        tag,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a host command; panics with its output if it fails.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace with loopback up and no route anywhere.
    pub fn new(name: &str) -> Self {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        sh(&["ip", "netns", "add", name]);
        let ns = Netns {
            name: name.to_string(),
        };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns.run(&[
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `nsenter --net`: only the network namespace changes, so bpffs and files stay visible.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path())).args(args);
        c
    }

    /// Runs a command inside; panics with its output if it fails.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(
            out.status.success(),
            "[{}] {args:?} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs `f` on a fresh thread inside this namespace and returns its result.
    pub fn exec<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }
}

/// Moves the calling thread into the namespace at `path` (threads only, never a test's own thread).
pub fn enter(path: &str) {
    let f = File::open(path).expect("open netns");
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A veth pair between two namespaces, created directly inside them.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    sh(&[
        "ip", "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]);
    a.run(&["ip", "link", "set", a_if, "up"]);
    b.run(&["ip", "link", "set", b_if, "up"]);
}

/// Pod `i`'s address as [`wire_pod`] sets it: 10.244.{i}.2 or fd00:244:{i}::2.
pub fn pod_ip(i: usize, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x244, i as u16, 0, 0, 0, 0, 2))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 244, i as u8, 2))
    }
}

/// A pod: `pod` joined to `node` by a veth (`eth0` in the pod, `p{i}` on the node), addresses
/// 10.244.{i}.2/24 and fd00:244:{i}::2/64, default routes via the node side (.1 / ::1).
pub fn wire_pod(node: &Netns, pod: &Netns, i: usize) {
    let nif = format!("p{i}");
    veth(pod, "eth0", node, &nif);
    pod.run(&[
        "ip",
        "addr",
        "add",
        &format!("10.244.{i}.2/24"),
        "dev",
        "eth0",
    ]);
    pod.run(&[
        "ip",
        "addr",
        "add",
        &format!("fd00:244:{i}::2/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    pod.run(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        &format!("10.244.{i}.1"),
    ]);
    pod.run(&[
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        &format!("fd00:244:{i}::1"),
    ]);
    node.run(&[
        "ip",
        "addr",
        "add",
        &format!("10.244.{i}.1/24"),
        "dev",
        &nif,
    ]);
    node.run(&[
        "ip",
        "addr",
        "add",
        &format!("fd00:244:{i}::1/64"),
        "dev",
        &nif,
        "nodad",
    ]);
}
