//! A node for the policy tests: the real agent (`--role node --cni`) in a test-made node
//! namespace with a manifests folder, and pods made through the real CNI plugin binary
//! (`oxilium-cni`, called as a runtime calls it, with K8S_POD_NAMESPACE / K8S_POD_NAME); plus an
//! optional "world" namespace behind the node holding addresses outside the cluster.
use super::{
    agent::{AgentProcess, bin},
    netns::{Netns, unique, veth},
    servers::Servers,
};
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    io::Write,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The node's own address (on its loopback): what the host's traffic to pods comes from.
pub const NODE_IP: &str = "10.200.0.1";
/// The pods' pool.
pub const POD_CIDR: &str = "10.250.0.0/24";

/// The plugin's folder (CNI_PATH): `oxilium-cni`, a symlink to the binary under test.
pub struct PluginDir(pub PathBuf);

impl PluginDir {
    pub fn new(tag: &str) -> PluginDir {
        let d = std::env::temp_dir().join(format!("oxilium-cni-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::symlink(bin(), d.join("oxilium-cni")).unwrap();
        PluginDir(d)
    }

    /// Runs `oxilium-cni` with `env` and `stdin`: (success, stdout as JSON).
    pub fn run(&self, env: &[(&str, &str)], stdin: &str) -> (bool, Value) {
        let mut c = Command::new(self.0.join("oxilium-cni"));
        c.env_clear()
            .env("CNI_PATH", &self.0)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v = serde_json::from_str(&text).unwrap_or(Value::Null);
        (out.status.success(), v)
    }
}

impl Drop for PluginDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Pod {
    pub ns: Netns,
    /// The first address the plugin gave.
    pub ip: IpAddr,
    /// Every address (dual-stack with an IPv4 and an IPv6 `--pod-cidr`).
    pub ips: Vec<IpAddr>,
}

pub struct PolicyNode {
    pub plugin: PluginDir,
    pub agent: AgentProcess,
    /// `namespace/name` → pod.
    pub pods: BTreeMap<String, Pod>,
    pub world: Option<Netns>,
    world_addrs: Vec<IpAddr>,
    servers: Vec<Servers>,
    pub node: Netns,
}

impl PolicyNode {
    /// A started agent whose manifests folder holds `files` (name, YAML) and a Node `node-a`
    /// with [`POD_CIDR`] and [`NODE_IP`]; `extra` are more agent flags.
    pub fn new(tag: &str, files: &[(String, String)], extra: &[&str]) -> PolicyNode {
        let node = Netns::new(&format!("{}n", unique(tag)));
        Self::in_node(node, tag, "node-a", POD_CIDR, NODE_IP, files, extra, &[])
    }

    /// As [`PolicyNode::new`] in `node` (set up by the caller), with the node's name, pod CIDR
    /// and address given; `nodes` are more Nodes (name, address) for the folder.
    #[allow(clippy::too_many_arguments)]
    pub fn in_node(
        node: Netns,
        tag: &str,
        name: &str,
        cidr: &str,
        node_ip: &str,
        files: &[(String, String)],
        extra: &[&str],
        nodes: &[(&str, &str)],
    ) -> PolicyNode {
        let p = unique(tag);
        node.run(&["ip", "addr", "add", &format!("{node_ip}/32"), "dev", "lo"]);
        let mut agent = AgentProcess::cni_node(&node, tag, name)
            .args(["--pod-cidr", cidr])
            .args(extra)
            .cgroup()
            .build();
        let mut y = format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nspec: {{podCIDRs: [\"{cidr}\"]}}\nstatus:\n  addresses: [{{type: InternalIP, address: {node_ip}}}]\n"
        );
        for (n, a) in nodes {
            y += &format!(
                "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {n}}}\nstatus:\n  addresses: [{{type: InternalIP, address: {a}}}]\n"
            );
        }
        agent.write_file("manifests/00-node.yaml", &y);
        for (name, text) in files {
            agent.write_file(&format!("manifests/{name}"), text);
        }
        agent.start();
        PolicyNode {
            plugin: PluginDir::new(&p),
            agent,
            pods: BTreeMap::new(),
            world: None,
            world_addrs: Vec::new(),
            servers: Vec::new(),
            node,
        }
    }

    fn conf(&self) -> String {
        json!({"cniVersion": "1.1.0", "name": "oxinet", "type": "oxilium-cni",
               "agent-socket": self.agent.socket()})
        .to_string()
    }

    /// ADD of pod `key` (`namespace/name`) in a new namespace.
    pub fn add_pod(&mut self, key: &str) -> IpAddr {
        let (pns, pname) = key.split_once('/').unwrap();
        let ns = Netns::new(&unique("pp"));
        let id = format!("c-{pns}-{pname}");
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={pns};K8S_POD_NAME={pname}");
        let (ok, out) = self.plugin.run(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", &id),
                ("CNI_NETNS", &ns.path()),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", &args),
            ],
            &self.conf(),
        );
        assert!(ok, "ADD {key}: {out}\n{}", self.agent.log());
        let ips: Vec<IpAddr> = out["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let a = a["address"].as_str().unwrap();
                a.split('/').next().unwrap().parse().unwrap()
            })
            .collect();
        let ip = ips[0];
        self.pods.insert(key.to_string(), Pod { ns, ip, ips });
        ip
    }

    /// Waits until no address of the node or a pod is tentative: the link-local addresses of new
    /// veths go through IPv6 duplicate address detection (about 2 s), and IPv6 traffic between a
    /// pod and the node does not flow before it is done.
    pub fn wait_ipv6_ready(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for ns in std::iter::once(&self.node).chain(self.pods.values().map(|p| &p.ns)) {
            loop {
                let out = ns
                    .command(&["ip", "-6", "addr", "show", "tentative"])
                    .output()
                    .unwrap();
                if out.stdout.is_empty() {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "IPv6 addresses still tentative after 10 s in {}",
                    ns.path()
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }

    /// DEL of pod `key`.
    pub fn del_pod(&mut self, key: &str) {
        let (pns, pname) = key.split_once('/').unwrap();
        let pod = self.pods.remove(key).expect("a pod of this node");
        let id = format!("c-{pns}-{pname}");
        let (ok, out) = self.plugin.run(
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", &id),
                ("CNI_NETNS", &pod.ns.path()),
                ("CNI_IFNAME", "eth0"),
            ],
            &self.conf(),
        );
        assert!(ok, "DEL {key}: {out}");
    }

    /// A namespace behind the node holding `addrs` (outside the cluster), made on first use.
    pub fn world_address(&mut self, ip: IpAddr) {
        if self.world_addrs.contains(&ip) {
            return;
        }
        self.world_addrs.push(ip);
        if self.world.is_none() {
            let w = Netns::new(&unique("pw"));
            veth(&self.node, "toworld", &w, "eth0");
            self.node
                .run(&["ip", "addr", "add", "169.254.9.1/30", "dev", "toworld"]);
            w.run(&["ip", "addr", "add", "169.254.9.2/30", "dev", "eth0"]);
            w.run(&["ip", "route", "add", "default", "via", "169.254.9.1"]);
            self.world = Some(w);
        }
        let w = self.world.as_ref().unwrap();
        let s = ip.to_string();
        w.run(&["ip", "addr", "add", &format!("{s}/32"), "dev", "lo"]);
        self.node.run(&[
            "ip",
            "route",
            "replace",
            &format!("{s}/32"),
            "via",
            "169.254.9.2",
        ]);
    }

    /// The namespace holding a pod, the node (host-network pods) or the world.
    pub fn ns_of(&self, key: &str) -> &Netns {
        match self.pods.get(key) {
            Some(p) => &p.ns,
            None if key == "host" => &self.node,
            None => self.world.as_ref().unwrap_or(&self.node),
        }
    }

    /// TCP and UDP servers answering `id` on `addr` inside `ns`.
    pub fn serve(&mut self, key: &str, id: &str, addr: SocketAddr) {
        let s = Servers::start(self.ns_of(key), id, &[addr]);
        self.servers.push(s);
    }
}

/// The case's files (name, text), for [`PolicyNode::new`].
pub fn case_files(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// One probe with short timeouts (a dropped SYN or datagram costs `wait`): Ok(answering id).
pub fn probe(
    ns_path: &str,
    to: SocketAddr,
    udp: bool,
    wait: std::time::Duration,
) -> Result<String, String> {
    use std::io::{BufRead, BufReader, Write as _};
    let path = ns_path.to_string();
    std::thread::spawn(move || {
        super::netns::enter(&path);
        if udp {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(wait)).unwrap();
            s.send_to(b"hello", to).map_err(|e| e.to_string())?;
            let mut buf = [0u8; 256];
            let (n, _) = s
                .recv_from(&mut buf)
                .map_err(|e| format!("udp {to}: {e}"))?;
            Ok(String::from_utf8_lossy(&buf[..n])
                .split(' ')
                .next()
                .unwrap_or("")
                .to_string())
        } else {
            let mut s = std::net::TcpStream::connect_timeout(&to, wait)
                .map_err(|e| format!("tcp {to}: {e}"))?;
            s.set_read_timeout(Some(wait)).unwrap();
            s.write_all(b"hello\n").map_err(|e| e.to_string())?;
            let mut line = String::new();
            BufReader::new(&mut s)
                .read_line(&mut line)
                .map_err(|e| format!("tcp {to}: {e}"))?;
            Ok(line.split(' ').next().unwrap_or("").to_string())
        }
    })
    .join()
    .unwrap()
}

/// Runs `probes` (namespace path, destination, udp) in parallel, at most `width` at once.
pub fn probe_all(
    probes: Vec<(String, SocketAddr, bool)>,
    wait: std::time::Duration,
    width: usize,
) -> Vec<Result<String, String>> {
    let mut out = Vec::with_capacity(probes.len());
    for chunk in probes.chunks(width) {
        let hs: Vec<_> = chunk
            .iter()
            .cloned()
            .map(|(ns, to, udp)| std::thread::spawn(move || probe(&ns, to, udp, wait)))
            .collect();
        out.extend(hs.into_iter().map(|h| h.join().unwrap()));
    }
    out
}
