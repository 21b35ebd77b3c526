//! podman's CNI backend running real containers on an oxilium network: podman (runc, cgroupfs
//! manager, `network_backend = "cni"`) calls `oxilium-cni` for every container it starts and
//! removes, inside a test-made node namespace whose agent runs with `--cni`. The containers'
//! root is a folder holding busybox-static (no image pull).
//! Kernel features: network namespaces, veth made through rtnetlink with IFLA_NET_NS_FD, tc BPF
//! through TCX links (≥ 6.6) with bpf_redirect_peer (≥ 5.10). Requires root, podman, runc and
//! busybox-static (ci/setup installs them); fails (never skips) without them.
mod support;

use serde_json::json;
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};
use support::{
    agent::AgentProcess,
    cni::{PluginDir, cni, conf},
    netns::{Netns, unique},
};

const MANIFESTS: &str = r#"apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDRs: ["10.244.1.0/24"]}
status:
  addresses: [{type: InternalIP, address: 10.200.0.1}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-4, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
  - addresses: ["10.244.1.1"]
"#;

/// podman with folders of its own (storage, run state, configuration, the rootfs), run inside
/// the node namespace; every container removed and the folders deleted on drop.
struct Podman {
    dir: PathBuf,
    node: String,
}

impl Podman {
    fn new(tag: &str, node: &Netns, plugin: &PluginDir, socket: &Path) -> Podman {
        for bin in ["/usr/bin/podman", "/usr/sbin/runc", "/bin/busybox"] {
            assert!(
                Path::new(bin).exists(),
                "{bin} missing: run ci/setup (podman, runc, busybox-static)"
            );
        }
        let dir = std::env::temp_dir().join(format!("oxilium-podman-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["rootfs/bin", "rootfs/www", "net.d"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", dir.join("rootfs/bin/busybox")).unwrap();
        std::fs::write(dir.join("rootfs/www/index.html"), "web\n").unwrap();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n\
                 network_config_dir = \"{}\"\n",
                plugin.0.display(),
                dir.join("net.d").display()
            ),
        )
        .unwrap();
        let conflist = json!({"cniVersion": "1.0.0", "name": "oxinet",
            "plugins": [{"type": "oxilium-cni", "agent-socket": socket}]});
        std::fs::write(dir.join("net.d/oxinet.conflist"), conflist.to_string()).unwrap();
        Podman {
            dir,
            node: node.path(),
        }
    }

    fn command(&self, args: &[&str]) -> Output {
        // nsenter --net only: podman, runc and the containers' veths stay in the node namespace
        // while /sys and the cgroup mounts stay the host's.
        Command::new("nsenter")
            .arg(format!("--net={}", self.node))
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .output()
            .unwrap()
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.command(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `podman run` of busybox on the oxilium network, with limits the machine allows.
    fn run(&self, extra: &[&str], cmd: &[&str]) -> Output {
        let rootfs = self.dir.join("rootfs").display().to_string();
        let mut args = vec![
            "run",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--network",
            "oxinet",
        ];
        args.extend_from_slice(extra);
        args.extend(["--rootfs", &rootfs, "/bin/busybox"]);
        args.extend_from_slice(cmd);
        self.command(&args)
    }

    /// A request from a new container: `wget` of `url` (busybox's `wget -T` crashes: `timeout`).
    fn fetch(&self, url: &str) -> Result<String, String> {
        let out = self.run(
            &["--rm"],
            &["timeout", "5", "/bin/busybox", "wget", "-qO-", url],
        );
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.command(&["rm", "--all", "--force", "--time", "0"]);
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.join("root"))
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Two containers reach each other and a ClusterIP (translated per packet by the endpoint
/// programs: the containers are in none of the socket LB's cgroups); removing a container runs
/// DEL and frees its address.
#[test]
fn podman_containers_on_an_oxilium_network() {
    let p = unique("pm");
    let node = Netns::new(&format!("{p}n"));
    let mut agent = AgentProcess::cni_node(&node, "podman", "node-a")
        .cgroup()
        .build();
    agent.write_file("manifests/all.yaml", MANIFESTS);
    agent.start();
    let plugin = PluginDir::new(&p);
    let pm = Podman::new(&p, &node, &plugin, agent.socket());
    let status = conf("1.0.0", agent.socket()).replace("1.0.0", "1.1.0");
    agent.eventually(std::time::Duration::from_secs(10), "STATUS ok", || {
        let r = cni(&plugin, &[("CNI_COMMAND", "STATUS")], &status);
        r.ok.then_some(()).ok_or(r.out)
    });

    let id = pm.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--network",
        "oxinet",
        "--rootfs",
        &pm.dir.join("rootfs").display().to_string(),
        "/bin/busybox",
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/www",
    ]);
    assert!(!id.trim().is_empty());
    let list = agent.cli(&["endpoint", "list"]);
    let eps = list.as_array().unwrap();
    assert_eq!(eps.len(), 1, "{list}");
    assert_eq!(eps[0]["addresses"][0], "10.244.1.1", "{list}");

    // Container to container, and to the ClusterIP.
    let direct = pm.fetch("http://10.244.1.1:8080/index.html");
    assert_eq!(direct.as_deref(), Ok("web"), "{}", agent.log());
    for _ in 0..3 {
        assert_eq!(
            pm.fetch("http://10.96.0.10/index.html").as_deref(),
            Ok("web")
        );
    }
    // The --rm containers were removed (DEL): only the server's endpoint is left.
    assert_eq!(
        agent.cli(&["endpoint", "list"]).as_array().unwrap().len(),
        1
    );

    // Removing the server frees its address.
    pm.ok(&["rm", "--force", "--time", "0", "web"]);
    assert_eq!(
        agent.cli(&["endpoint", "list"]).as_array().unwrap().len(),
        0
    );
    let state = std::fs::read_to_string(agent.dir().join("state").join("cni-ipam.json")).unwrap();
    assert!(!state.contains("10.244.1.1\""), "{state}");
}
