//! Test-made cgroups v2 and the client processes run inside one (and a network namespace): what
//! the socket-LB tests need. Kernel features: cgroup v2 (an existing mount, or one made here).
use super::netns::{Netns, unique};
use oxilium::bpf::socklb;
use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

/// The client: for each of N fresh sockets, one request; prints
/// `OK <backend id> <peer addr> <peer port>` (peer from getpeername / recvfrom) or `ERR <errno>`.
pub const CLIENT: &str = r#"
import socket, sys
mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
for _ in range(n):
    s = None
    try:
        if mode == 'tcp':
            s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(2)
            s.connect((host, port)); peer = s.getpeername()
            s.sendall(b'hello\n'); line = s.makefile().readline()
        else:
            s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(2)
            s.sendto(b'hello', (host, port)); data, peer = s.recvfrom(512); line = data.decode()
        print('OK', line.split()[0], peer[0], peer[1], flush=True)
    except OSError as e:
        print('ERR', e.errno if e.errno is not None else 'timeout', flush=True)
    finally:
        if s is not None: s.close()
"#;

#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Ok { id: String, peer: String, port: u16 },
    Err(String),
}

/// A cgroup v2 child made by the test (and the cgroup2 mount, when the test had to make one).
pub struct Cgroup {
    pub path: PathBuf,
    mounted: Option<PathBuf>,
}

impl Cgroup {
    pub fn new(tag: &str) -> Cgroup {
        let own = std::env::var_os("OXILIUM_TEST_OWN_CGROUP2").is_some();
        let existing = socklb::find_cgroup2().expect("reading mountinfo");
        let (root, mounted) = match existing {
            Some(p) if !own && !p.starts_with("/tmp") => (p, None),
            _ => {
                let dir = PathBuf::from(format!("/tmp/{}-cg2", unique(tag)));
                socklb::mount_cgroup2(&dir).expect("mounting cgroup2");
                (dir.clone(), Some(dir))
            }
        };
        let path = root.join(unique(tag));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Cgroup { path, mounted }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // The clients have exited; the kernel may take a moment to mark the cgroup empty.
        for _ in 0..50 {
            if fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(dir) = &self.mounted {
            let c = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: umount2(2) of the test's own mount.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            let _ = fs::remove_dir(dir);
        }
    }
}

/// The Python interpreter for the clients.
pub fn python() -> String {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3".into()
    } else {
        "python3".into()
    }
}

/// Runs `interpreter -c script args...` inside `netns` (and in `cgroup`, joined before any
/// socket exists); its standard output. The process must exit with success.
pub fn run_script(
    cgroup: Option<&Path>,
    netns: &Netns,
    interpreter: &str,
    script: &str,
    args: &[&str],
) -> String {
    let join =
        r#"[ -z "$1" ] || echo $$ > "$1/cgroup.procs" || exit 9; shift; exec nsenter --net="$@""#;
    let cg = cgroup.map(|c| c.display().to_string()).unwrap_or_default();
    let out = Command::new("sh")
        .args([
            "-c",
            join,
            "sh",
            &cg,
            &netns.path(),
            interpreter,
            "-c",
            script,
        ])
        .args(args)
        .output()
        .expect("spawning the client");
    assert!(
        out.status.success(),
        "client failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the client script `n` times in one process inside `netns` (and in `cgroup`, joined before
/// any socket exists); one answer per request.
pub fn run_client(
    cgroup: Option<&Path>,
    netns: &Netns,
    mode: &str,
    host: &str,
    port: u16,
    n: usize,
) -> Vec<Answer> {
    let out = run_script(
        cgroup,
        netns,
        &python(),
        CLIENT,
        &[mode, host, &port.to_string(), &n.to_string()],
    );
    let answers: Vec<Answer> = out
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                ["OK", id, peer, port] => Answer::Ok {
                    id: id.to_string(),
                    peer: peer.to_string(),
                    port: port.parse().unwrap(),
                },
                ["ERR", e] => Answer::Err(e.to_string()),
                _ => panic!("client said {l:?}"),
            }
        })
        .collect();
    assert_eq!(answers.len(), n, "one answer per request");
    answers
}
