//! The agent under test: the `oxilium` binary run as `oxilium agent ...` inside a test-made network
//! namespace, with its own work folder (API socket, log, and whatever the bed writes there: a
//! config, a manifests folder), its own bpffs pin folder and, when asked, its own cgroup v2 child.
//!
//! ```ignore
//! let mut agent = AgentProcess::builder(&ns, "kn")
//!     .args(["--role", "node", "--node", "node-a"])
//!     .cgroup()
//!     .build();          // folders made, nothing started: write a config into agent.dir()
//! agent.start();         // spawn, then wait for the API socket
//! agent.cli(&["status"]);
//! agent.restart();       // SIGTERM (pins kept, as on an upgrade), then start again
//! ```
//! On drop (a panicking test included) the process is killed and its pins (which detaches its
//! links and frees its maps), socket, work folder and cgroup are removed.
use super::{cgroup::Cgroup, netns::Netns};
use serde_json::Value;
use std::{
    ffi::{OsStr, OsString},
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// How long the agent may take to open its API socket, and to exit after SIGTERM.
pub const READY: Duration = Duration::from_secs(20);

/// The `oxilium` binary under test: `$OXILIUM_TEST_BIN` when set (a copy taken right after the
/// build, when the target folder is shared with other checkouts that may rebuild it meanwhile),
/// else the one cargo built.
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("OXILIUM_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_oxilium").into())
    })
}

/// Runs an `oxilium` client command against the agent at `socket` with `-o json`; panics with its
/// error output when it fails.
fn oxilium_json(socket: &Path, args: &[&str]) -> Value {
    let out = client(socket, args);
    assert!(
        out.status.success(),
        "oxilium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn client(socket: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .args(["-o", "json", "--socket"])
        .arg(socket)
        .output()
        .unwrap()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// What to run: see [`AgentProcess::builder`].
pub struct AgentBuilder {
    netns: String,
    tag: String,
    args: Vec<OsString>,
    files: Vec<(String, String)>,
    env: Vec<(OsString, OsString)>,
    cgroup: bool,
}

impl AgentBuilder {
    /// Flags after `oxilium agent` (the pin folder, socket and cgroup flags are added).
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// `flag DIR/name`: a file or folder of the work folder (e.g. `--config`, `lb.yaml`), which the
    /// bed writes through [`AgentProcess::dir`].
    pub fn file_arg(mut self, flag: &str, name: &str) -> Self {
        self.files.push((flag.into(), name.into()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// A test-made cgroup v2 child, passed as `--cgroup` (the agent's socket LB attaches there).
    pub fn cgroup(mut self) -> Self {
        self.cgroup = true;
        self
    }

    /// Makes the folders (and cgroup); starts nothing.
    pub fn build(self) -> AgentProcess {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{}-{n}", self.tag, std::process::id());
        let dir = std::env::temp_dir().join(format!("oxilium-agent-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = self.args;
        for (flag, name) in self.files {
            args.extend([flag.into(), dir.join(name).into()]);
        }
        AgentProcess {
            child: None,
            netns: self.netns,
            args,
            env: self.env,
            pins: PathBuf::from(format!("/sys/fs/bpf/oxilium-test-{id}")),
            socket: dir.join("api.sock"),
            log: dir.join("agent.log"),
            dir,
            cgroup: self.cgroup.then(|| Cgroup::new(&self.tag)),
        }
    }

    /// [`build`](Self::build) and [`AgentProcess::start`].
    pub fn start(self) -> AgentProcess {
        let mut a = self.build();
        a.start();
        a
    }
}

/// One agent process of a test bed; see the module's doc.
pub struct AgentProcess {
    child: Option<Child>,
    /// The namespace file (`/run/netns/NAME`) it runs in.
    netns: String,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    dir: PathBuf,
    pins: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    /// Dropped after the process is gone and its pins (so its cgroup links) removed.
    cgroup: Option<Cgroup>,
}

impl AgentProcess {
    /// An agent to run in `netns`; `tag` names its folders and cgroup. Only the namespace's path
    /// is kept: the bed keeps the [`Netns`] (drop the agent first).
    pub fn builder(netns: &Netns, tag: &str) -> AgentBuilder {
        AgentBuilder {
            netns: netns.path(),
            tag: tag.to_string(),
            args: Vec::new(),
            files: Vec::new(),
            env: Vec::new(),
            cgroup: false,
        }
    }

    /// The node agent of the cluster-network tests: `--role node --node NODE --watch-ms 100
    /// --cni`, with `--manifests` and `--state-dir` folders of its own (write
    /// `manifests/...` before starting it); add flags with [`AgentBuilder::args`].
    pub fn cni_node(netns: &Netns, tag: &str, node: &str) -> AgentBuilder {
        Self::builder(netns, tag)
            .args([
                "--role",
                "node",
                "--node",
                node,
                "--watch-ms",
                "100",
                "--cni",
            ])
            .file_arg("--manifests", "manifests")
            .file_arg("--state-dir", "state")
    }

    /// The work folder: `api.sock`, `agent.log`, and the bed's own files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bpffs pin folder (`--pin-dir`).
    pub fn pins(&self) -> &Path {
        &self.pins
    }

    /// The API socket (`--socket`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The cgroup passed as `--cgroup`; panics when the builder asked for none.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup.as_ref().expect("an agent with a cgroup").path
    }

    /// More flags after `oxilium agent`, from the next [`start`](Self::start) on.
    pub fn add_args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, args: I) {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
    }

    /// Gives `flag` another value for the next start (the flag must be there already).
    pub fn set_arg(&mut self, flag: &str, value: &str) {
        let i = self
            .args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} is not among the agent's flags"));
        self.args[i + 1] = value.into();
    }

    /// Replaces `DIR/name` (folders made as needed) atomically: a running agent reads the old or
    /// the new file, never half of one. The temporary file is outside any folder it watches.
    pub fn write_file(&self, name: &str, contents: &str) {
        let path = self.dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = self.dir.join(format!("{}.tmp", name.replace('/', "-")));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// `oxilium agent ARGS [--cgroup C] --pin-dir P --socket S` inside the namespace, its
    /// standard error appended to the log; returns without waiting.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the agent is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new("nsenter");
        // Only the network namespace changes: bpffs, the cgroup tree and the files stay visible.
        cmd.arg(format!("--net={}", self.netns))
            .args([bin(), "agent"])
            .args(&self.args);
        if let Some(cg) = &self.cgroup {
            cmd.arg("--cgroup").arg(&cg.path);
        }
        cmd.arg("--pin-dir")
            .arg(&self.pins)
            .arg("--socket")
            .arg(&self.socket)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        self.child = Some(cmd.spawn().expect("spawning the agent"));
    }

    /// The agent's process id (nsenter execs the agent in place), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Waits until the API socket exists; panics with the log if the agent exits first or takes
    /// longer than [`READY`].
    pub fn wait_ready(&mut self) {
        let t = Instant::now();
        while !self.socket.exists() {
            let child = self.child.as_mut().expect("the agent was not started");
            if let Some(status) = child.try_wait().unwrap() {
                panic!("agent exited ({status}):\n{}", self.log());
            }
            assert!(t.elapsed() < READY, "agent did not start:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a spawned agent to exit on its own (a start it refuses); panics with the log
    /// after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let t = Instant::now();
        let child = self.child.as_mut().expect("the agent was not started");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                t.elapsed() < timeout,
                "agent still running:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`spawn`](Self::spawn) and [`wait_ready`](Self::wait_ready).
    pub fn start(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// SIGTERM and wait (SIGKILL after [`READY`]): the agent leaves its maps and links pinned,
    /// as on an upgrade. The socket file goes, so that the next start waits for a new one.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: a signal to our own child, not yet reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while c.try_wait().unwrap().is_none() && t.elapsed() < READY {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// SIGKILL and wait; pins stay.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// [`stop`](Self::stop), then [`start`](Self::start) with the same flags and pins.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Everything the agent wrote to standard error (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `oxilium ARGS -o json --socket S`: the agent's API through its client.
    pub fn cli(&self, args: &[&str]) -> Value {
        oxilium_json(&self.socket, args)
    }

    pub fn status(&self) -> Value {
        self.cli(&["status"])
    }

    /// The status for a failure message: never panics (the agent may be gone).
    pub fn status_text(&self) -> String {
        let out = client(&self.socket, &["status"]);
        if out.status.success() {
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            format!("(no status: {})", String::from_utf8_lossy(&out.stderr))
        }
    }

    /// Polls `f` every 50 ms until it is Ok; after `timeout`, panics with its last error, the
    /// agent's status and its log.
    #[track_caller]
    pub fn eventually<E: std::fmt::Debug>(
        &self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut() -> Result<(), E>,
    ) {
        let t = Instant::now();
        loop {
            let Err(e) = f() else { return };
            assert!(
                t.elapsed() < timeout,
                "timed out waiting for {what}; last: {e:?}\nstatus: {}\nagent log:\n{}",
                self.status_text(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `oxilium agent --cleanup` on this agent's pin folder, in its namespace (the agent stopped
    /// first): detaches everything it attached.
    pub fn cleanup(&mut self) {
        self.kill();
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns))
            .args([bin(), "agent", "--cleanup", "--pin-dir"])
            .arg(&self.pins)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
        // Removing the pins detaches the agent's links (cgroup, XDP, TCX) and frees its maps.
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir_all(&self.dir);
        // The cgroup (a field) goes after this, now that nothing is attached to it.
    }
}
