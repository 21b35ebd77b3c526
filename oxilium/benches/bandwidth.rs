//! The bandwidth manager against the CNI `bandwidth` plugin's TBF, in the same run on the same
//! pods: `cargo bench -p oxilium --bench bandwidth` (root; env OXILIUM_BENCH_SECS: seconds per
//! iperf3 run, default 5; OXILIUM_BENCH_RATES: Mbit/s list, default "10,100").
//!
//! For each rate and direction (egress: pod → node, the pod veth's tc ingress; ingress:
//! node → pod, its tc egress), one TCP stream (ECN on in the pods) runs while ping sends a
//! probe every 10 ms along the same limited path: the goodput as a share of the rate, and the
//! round-trip time (p50 / p99) and loss of the probes under that load.
//! - oxilium: `--bandwidth-manager`, the pod's annotation (the token bucket: this kernel has no
//!   sch_fq);
//! - TBF: the same pods without the annotation, shaped as the `bandwidth` plugin shapes them
//!   (TBF root qdisc on the host veth for ingress; ingress qdisc + mirred to an ifb with a TBF
//!   for egress; queue limit = 25 ms at the rate + burst), burst the same as oxilium's bucket.
//!   The agent's from-pod program stays attached: what it lets through goes on (TCX_NEXT) to
//!   the legacy ingress filter that redirects to the ifb.
#[path = "../tests/support/agent.rs"]
#[allow(dead_code)]
mod agent;
#[path = "../tests/support/bandwidth.rs"]
#[allow(dead_code)]
mod bandwidth;
#[path = "../tests/support/cgroup.rs"]
#[allow(dead_code)]
mod cgroup;
#[path = "../tests/support/cni.rs"]
#[allow(dead_code)]
mod cni;
#[path = "../tests/support/netns.rs"]
#[allow(dead_code)]
mod netns;

use bandwidth::{BwBed, NODE_IP, iperf3, ping, quantile, tbf_limit};

const M: u64 = 1_000_000;

struct Figures {
    goodput: f64,
    p50: f64,
    p99: f64,
    loss: f64,
}

/// One TCP stream `from` → `to` with ping probes along it.
fn measure(b: &BwBed, egress: bool, secs: u32) -> Figures {
    let (client, cip, server, sip) = if egress {
        (&b.pods[0], b.ips[0].as_str(), &b.node, NODE_IP)
    } else {
        (&b.node, NODE_IP, &b.pods[1], b.ips[1].as_str())
    };
    std::thread::scope(|s| {
        let load = s.spawn(|| iperf3(client, cip, server, sip, secs, &[]));
        // Probes while the flow is past its first second.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let count = (secs.saturating_sub(1) * 100).max(50);
        let (rtts, loss) = ping(client, sip, count, 10);
        let d = load.join().unwrap();
        Figures {
            goodput: d.bits,
            p50: quantile(&rtts, 0.5),
            p99: quantile(&rtts, 0.99),
            loss,
        }
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs: u32 = std::env::var("OXILIUM_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rates: Vec<u64> = std::env::var("OXILIUM_BENCH_RATES")
        .unwrap_or_else(|_| "10,100".into())
        .split(',')
        .filter_map(|r| r.trim().parse::<u64>().ok())
        .map(|r| r * M)
        .collect();
    println!(
        "{:<8} {:<8} {:<9} {:>10} {:>9} {:>9} {:>7}",
        "rate", "dir", "shaper", "goodput", "rtt p50", "rtt p99", "loss"
    );
    for &rate in &rates {
        let q = format!("{}M", rate / M);
        let ours = BwBed::new("bwb", true, &[(Some(&q), None), (None, Some(&q))]);
        ours.wait_rates(1, Some(rate), None);
        ours.wait_rates(2, None, Some(rate));
        let tbf = BwBed::new("bwt", false, &[(None, None), (None, None)]);
        // The same bucket as oxilium's: 250 ms at the rate, at least two GSO packets
        // (agent::node::endpoints::bandwidth::settings).
        let burst = (rate / 8 / 4).max(2 * 65_536 + 2 * 1_514);
        tbf_limit(&tbf, 0, Some(rate), None, burst);
        tbf_limit(&tbf, 1, None, Some(rate), burst);
        for (dir, egress) in [("egress", true), ("ingress", false)] {
            for (name, bed) in [("oxilium", &ours), ("tbf", &tbf)] {
                let f = measure(bed, egress, secs);
                println!(
                    "{:<8} {:<8} {:<9} {:>9.1}% {:>7.2}ms {:>7.2}ms {:>6.1}%",
                    q,
                    dir,
                    name,
                    f.goodput / rate as f64 * 100.0,
                    f.p50,
                    f.p99,
                    f.loss * 100.0
                );
            }
        }
    }
}
