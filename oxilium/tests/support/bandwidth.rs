//! The bandwidth manager's bed: a node namespace with an agent (`--cni --bandwidth-manager`),
//! two pods made through `oxilium-cni` (`bw-1`, `bw-2`, ECN on in both), the pods' annotations
//! in the manifests folder (rewritten to change them live), and the node reachable from the
//! pods at `NODE_IP` (on its loopback). iperf3 runs between them; [`tbf_limit`] sets the CNI
//! `bandwidth` plugin's shaping on the same veths instead, for comparisons.
use super::{
    agent::AgentProcess,
    cni::{PluginDir, add, conf, v4},
    netns::{Netns, unique},
};
use serde_json::Value;
use std::{
    process::{Child, Stdio},
    time::Duration,
};

/// The node's own address (on its loopback): traffic from it to a pod crosses the pod veth's
/// egress (the to-pod program).
pub const NODE_IP: &str = "10.200.0.1";

pub struct BwBed {
    pub plugin: PluginDir,
    pub agent: AgentProcess,
    pub node: Netns,
    pub pods: Vec<Netns>,
    /// The pods' IPv4 addresses.
    pub ips: Vec<String>,
    /// The pods' host-side veths.
    pub devs: Vec<String>,
}

/// Pod `bw-{i}`'s annotations: (egress, ingress).
pub type Annotations<'a> = [(Option<&'a str>, Option<&'a str>); 2];

fn manifests(ann: &Annotations) -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nspec: {podCIDRs: [\"10.244.1.0/28\"]}\n",
    );
    for (i, (eg, ing)) in ann.iter().enumerate() {
        let mut a = Vec::new();
        if let Some(e) = eg {
            a.push(format!("kubernetes.io/egress-bandwidth: \"{e}\""));
        }
        if let Some(e) = ing {
            a.push(format!("kubernetes.io/ingress-bandwidth: \"{e}\""));
        }
        y += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: bw-{}, namespace: default, annotations: {{{}}}}}\nspec: {{nodeName: node-a, containers: [{{name: c, image: x}}]}}\n",
            i + 1,
            a.join(", ")
        );
    }
    y
}

impl BwBed {
    /// The bed with the agent's bandwidth manager on (`manager`) or off (the TBF baseline).
    pub fn new(tag: &str, manager: bool, ann: &Annotations) -> BwBed {
        let p = unique(tag);
        let node = Netns::new(&format!("{p}n"));
        node.run(&["ip", "addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]);
        let extra: &[&str] = if manager {
            &["--bandwidth-manager"]
        } else {
            &[]
        };
        let mut agent = AgentProcess::cni_node(&node, tag, "node-a")
            .args(extra)
            .build();
        agent.write_file("manifests/all.yaml", &manifests(ann));
        agent.start();
        let plugin = PluginDir::new(&p);
        let mut b = BwBed {
            plugin,
            agent,
            node,
            pods: Vec::new(),
            ips: Vec::new(),
            devs: Vec::new(),
        };
        for i in 1..=2 {
            let ns = Netns::new(&format!("{p}p{i}"));
            ns.run(&["sysctl", "-qw", "net.ipv4.tcp_ecn=1"]);
            let r = add(
                &b.plugin,
                &conf("1.1.0", b.agent.socket()),
                &format!("c{i}"),
                &ns.path(),
                &format!("bw-{i}"),
            );
            b.ips.push(v4(&r));
            b.devs
                .push(r["interfaces"][0]["name"].as_str().unwrap().to_string());
            b.pods.push(ns);
        }
        b
    }

    /// Rewrites the pods' annotations (the agent follows the folder).
    pub fn annotate(&self, ann: &Annotations) {
        self.agent.write_file("manifests/all.yaml", &manifests(ann));
    }

    /// Pod `bw-{i}`'s row of `endpoint list`.
    pub fn endpoint(&self, i: usize) -> Value {
        let list = self.agent.cli(&["endpoint", "list"]);
        list.as_array()
            .and_then(|l| {
                l.iter()
                    .find(|e| e["pod"] == format!("default/bw-{i}"))
                    .cloned()
            })
            .unwrap_or(Value::Null)
    }

    /// Waits until pod `bw-{i}`'s entries say `egress` / `ingress` bits per second (None:
    /// unlimited).
    #[track_caller]
    pub fn wait_rates(&self, i: usize, egress: Option<u64>, ingress: Option<u64>) {
        self.agent
            .eventually(Duration::from_secs(10), "the bandwidth entries", || {
                let e = self.endpoint(i);
                let b = &e["bandwidth"];
                let got = (
                    b["egress"]["bits_per_second"].as_u64(),
                    b["ingress"]["bits_per_second"].as_u64(),
                );
                if got == (egress, ingress) {
                    Ok(())
                } else {
                    Err(format!("{got:?}: {e}"))
                }
            });
    }
}

/// An iperf3 server (`-s`, one test at a time) in `ns` on `ip`:5201; killed on drop.
pub struct Iperf3Server(Child);

impl Iperf3Server {
    pub fn start(ns: &Netns, ip: &str) -> Iperf3Server {
        let c = ns
            .command(&["iperf3", "-s", "-B", ip, "-1"])
            .arg("--forceflush")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 -s");
        std::thread::sleep(Duration::from_millis(200));
        Iperf3Server(c)
    }
}

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What an iperf3 run delivered.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// Receiver's goodput over the run (after the omitted first second), bits/s.
    pub bits: f64,
    /// Per-second receiver-side intervals (sender's view for TCP), bits/s.
    pub intervals: Vec<f64>,
    pub json: Value,
}

/// iperf3 client in `ns` (bound to `from`) to `to`: `extra` adds `-P`, `-u -b`, ...; a server is
/// started in `server_ns` for the run. `-O 1`: slow start and the initial burst are not counted.
pub fn iperf3(
    ns: &Netns,
    from: &str,
    server_ns: &Netns,
    to: &str,
    secs: u32,
    extra: &[&str],
) -> Delivered {
    let _server = Iperf3Server::start(server_ns, to);
    let secs = secs.to_string();
    let mut args = vec!["iperf3", "-c", to, "-B", from, "-t", &secs, "-O", "1", "-J"];
    args.extend_from_slice(extra);
    let out = ns.command(&args).output().expect("iperf3 -c");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 {args:?}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(v["error"].is_null(), "iperf3 {args:?}: {}", v["error"]);
    let udp = extra.contains(&"-u");
    let end = &v["end"];
    let bits = if udp {
        // The receiver's count: what the sender sent minus what it reports lost.
        let s = &end["sum"];
        let lost = s["lost_percent"].as_f64().unwrap_or(0.0);
        s["bits_per_second"].as_f64().unwrap() * (1.0 - lost / 100.0)
    } else {
        end["sum_received"]["bits_per_second"].as_f64().unwrap()
    };
    let intervals = v["intervals"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["sum"]["omitted"] != true)
                .filter_map(|i| i["sum"]["bits_per_second"].as_f64())
                .collect()
        })
        .unwrap_or_default();
    Delivered {
        bits,
        intervals,
        json: v,
    }
}

/// Round-trip times (ms) of `count` pings from `ns` to `to` every `interval_ms`, and the share
/// of them lost.
pub fn ping(ns: &Netns, to: &str, count: u32, interval_ms: u32) -> (Vec<f64>, f64) {
    let interval = format!("{:.3}", interval_ms as f64 / 1000.0);
    let out = ns
        .command(&[
            "ping",
            "-n",
            "-c",
            &count.to_string(),
            "-i",
            &interval,
            "-W",
            "1",
            to,
        ])
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    let rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    let lost = 1.0 - rtts.len() as f64 / count as f64;
    (rtts, lost)
}

/// The `q` quantile (0..=1) of `v`.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * q).round() as usize]
}

/// The CNI `bandwidth` plugin's shaping, set by hand on the same veths (as the plugin does it):
/// ingress (to the pod) a TBF root qdisc on the host veth; egress (from the pod) the host veth's
/// ingress redirected (mirred) to an ifb device with a TBF root qdisc. `burst` in bytes; the
/// plugin's latency of 25 ms sets the queue limit. The agent's from-pod program stays attached:
/// it passes what it does not decide on (TCX_NEXT) to the legacy ingress filter the plugin's
/// redirect hangs on.
pub fn tbf_limit(
    b: &BwBed,
    pod: usize,
    egress_bits: Option<u64>,
    ingress_bits: Option<u64>,
    burst: u64,
) {
    let (node, dev) = (&b.node, b.devs[pod].as_str());
    let tbf = |d: &str, bits: u64| {
        let limit = bits / 8 * 25 / 1000 + burst;
        node.run(&[
            "tc",
            "qdisc",
            "replace",
            "dev",
            d,
            "root",
            "tbf",
            "rate",
            &format!("{bits}bit"),
            "burst",
            &burst.to_string(),
            "limit",
            &limit.to_string(),
        ]);
    };
    if let Some(bits) = ingress_bits {
        tbf(dev, bits);
    }
    if let Some(bits) = egress_bits {
        let ifb = format!("ifb{}", &dev[dev.len().saturating_sub(8)..]);
        node.run(&["ip", "link", "add", &ifb, "type", "ifb"]);
        node.run(&["ip", "link", "set", &ifb, "up"]);
        tbf(&ifb, bits);
        node.run(&[
            "tc", "qdisc", "add", "dev", dev, "handle", "ffff:", "ingress",
        ]);
        node.run(&[
            "tc", "filter", "add", "dev", dev, "parent", "ffff:", "protocol", "all", "u32",
            "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", &ifb,
        ]);
    }
}
