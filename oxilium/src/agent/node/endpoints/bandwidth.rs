//! `--bandwidth-manager`: the pods' `kubernetes.io/egress-bandwidth` and
//! `kubernetes.io/ingress-bandwidth` annotations, written to `OXI_BANDWIDTH` for the endpoint
//! programs (datapath::bandwidth; the schedule is described in abi::bandwidth).
//!
//! Egress is paced (EDT, released by `sch_fq`) when every `--device` took an fq root qdisc, and
//! policed by the token bucket otherwise; ingress is always the token bucket. The annotations
//! are read when the endpoint is made and followed afterwards ([`spawn`]): a changed value
//! applies to running flows, a removed one lifts the limit, a bad one is refused (logged and
//! shown by `endpoint list`, naming the pod and the annotation) and leaves the pod unlimited.
use super::{CniAgent, SharedCni};
use abi::bandwidth::{
    Bandwidth, BandwidthKey, DIR_EGRESS, DIR_INGRESS, MODE_BUCKET, MODE_EDT, names,
};
use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};
use serde::Serialize;
use serde_json::{Value, json};
use std::{collections::BTreeMap, path::Path, time::Duration};
use tracing::{info, warn};

pub const EGRESS_ANNOTATION: &str = "kubernetes.io/egress-bandwidth";
pub const INGRESS_ANNOTATION: &str = "kubernetes.io/ingress-bandwidth";
/// The range Kubernetes accepts for these annotations: 1 kbit/s to 1 Pbit/s.
const MIN_BITS: u128 = 1_000;
const MAX_BITS: u128 = 1_000_000_000_000_000;
/// The bucket holds this much time at the rate...
const BURST_TIME_NS: u64 = 250_000_000;
/// ...and at least this many bytes: two full GSO packets (a smaller bucket would never pass a
/// 64 KiB TCP segment burst).
const MIN_BURST_BYTES: u64 = 2 * 65_536 + 2 * 1_514;
/// fq's horizon (and the programs' EDT horizon drop).
pub const HORIZON_NS: u64 = 2_000_000_000;

/// A pod's rates, in bits per second (None: unlimited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub egress: Option<u64>,
    pub ingress: Option<u64>,
}

/// The limits a pod's annotations ask for; an error names the pod and the annotation.
pub fn limits(pod: &str, annotations: &BTreeMap<String, String>) -> Result<Limits, String> {
    let rate = |name: &str| -> Result<Option<u64>, String> {
        let Some(v) = annotations.get(name) else {
            return Ok(None);
        };
        let bits = k8s::quantity::parse_integer(v)
            .map_err(|e| format!("pod {pod}: annotation {name}={v:?}: {e}"))?;
        if !(MIN_BITS..=MAX_BITS).contains(&bits) {
            return Err(format!(
                "pod {pod}: annotation {name}={v:?}: out of range (1k to 1P bits per second)"
            ));
        }
        Ok(Some(bits as u64))
    };
    Ok(Limits {
        egress: rate(EGRESS_ANNOTATION)?,
        ingress: rate(INGRESS_ANNOTATION)?,
    })
}

/// The map entry's settings for a rate of `bits` per second.
pub fn settings(bits: u64, mode: u32, endpoint: u32) -> Bandwidth {
    let rate = (bits / 8).max(1);
    let mut b = Bandwidth {
        rate,
        mode,
        endpoint,
        horizon_ns: HORIZON_NS,
        ..Default::default()
    };
    let burst_bytes = (rate.saturating_mul(BURST_TIME_NS) / 1_000_000_000).max(MIN_BURST_BYTES);
    b.burst_ns = b.cost_ns(burst_bytes);
    // ECT packets are marked once half the bucket is spent.
    b.mark_ns = b.burst_ns / 2;
    b
}

/// How egress is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EgressMode {
    /// Departure times in the programs, released by `sch_fq` on the devices.
    EdtFq,
    /// The token bucket (ECN marks, then drops), no qdisc.
    TokenBucket,
}

pub struct BandwidthManager {
    map: HashMap<MapData, BandwidthKey, Bandwidth>,
    pub egress_mode: EgressMode,
    /// Why the egress mode is what it is.
    pub reason: String,
    applied: BTreeMap<u32, Limits>,
    /// Refused annotations by pod.
    errors: BTreeMap<String, String>,
}

impl BandwidthManager {
    /// Opens the pinned `OXI_BANDWIDTH` (the endpoint programs' object made it) and sets fq on
    /// the devices when the kernel has it.
    pub async fn open(pin_dir: &Path, nl: &net::Netlink, devices: &[String]) -> Result<Self> {
        let p = pin_dir.join(names::BANDWIDTH);
        let data = MapData::from_pin(&p).with_context(|| format!("{}", p.display()))?;
        let map = HashMap::try_from(Map::HashMap(data))?;
        let (egress_mode, reason) = egress_mode(nl, devices).await?;
        info!(mode = ?egress_mode, %reason, "bandwidth manager");
        Ok(BandwidthManager {
            map,
            egress_mode,
            reason,
            applied: BTreeMap::new(),
            errors: BTreeMap::new(),
        })
    }

    /// Applies `pod`'s annotations to the endpoint behind host veth `ifindex`.
    pub fn apply(
        &mut self,
        id: u32,
        ifindex: u32,
        pod: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<()> {
        let l = match limits(pod, annotations) {
            Ok(l) => {
                self.errors.remove(pod);
                l
            }
            Err(e) => {
                if self.errors.get(pod) != Some(&e) {
                    warn!("bandwidth: {e}; the pod is left unlimited");
                }
                self.errors.insert(pod.to_string(), e);
                Limits::default()
            }
        };
        if self.applied.get(&ifindex) == Some(&l) {
            return Ok(());
        }
        let egress_mode = match self.egress_mode {
            EgressMode::EdtFq => MODE_EDT,
            EgressMode::TokenBucket => MODE_BUCKET,
        };
        for (dir, rate, mode) in [
            (DIR_EGRESS, l.egress, egress_mode),
            (DIR_INGRESS, l.ingress, MODE_BUCKET),
        ] {
            let key = BandwidthKey { ifindex, dir };
            match rate {
                Some(bits) => {
                    let mut v = settings(bits, mode, id);
                    // The schedule and the counters carry over a change of rate (a change
                    // grants no new burst).
                    if let Ok(old) = self.map.get(&key, 0) {
                        (v.tat, v.passed, v.dropped, v.marked) =
                            (old.tat, old.passed, old.dropped, old.marked);
                    }
                    self.map
                        .insert(key, v, 0)
                        .with_context(|| format!("writing the bandwidth of {pod}"))?;
                }
                None if self.map.get(&key, 0).is_ok() => self
                    .map
                    .remove(&key)
                    .context("removing a bandwidth entry")?,
                None => {}
            }
        }
        info!(pod, ?l, "bandwidth");
        self.applied.insert(ifindex, l);
        Ok(())
    }

    /// Removes an endpoint's entries.
    pub fn clear(&mut self, ifindex: u32, pod: Option<&str>) {
        for dir in [DIR_EGRESS, DIR_INGRESS] {
            let _ = self.map.remove(&BandwidthKey { ifindex, dir });
        }
        self.applied.remove(&ifindex);
        if let Some(p) = pod {
            self.errors.remove(p);
        }
    }

    /// An endpoint's rates and counters (`endpoint list`).
    pub fn view(&self, ifindex: u32, pod: Option<&str>) -> Value {
        let dir = |d: u32| {
            self.map
                .get(&BandwidthKey { ifindex, dir: d }, 0)
                .ok()
                .map(|b| {
                    json!({
                        "bits_per_second": b.rate * 8,
                        "mode": if b.mode == MODE_EDT { "edt-fq" } else { "token-bucket" },
                        "passed": b.passed, "dropped": b.dropped, "marked": b.marked,
                    })
                })
        };
        json!({
            "egress": dir(DIR_EGRESS),
            "ingress": dir(DIR_INGRESS),
            "error": pod.and_then(|p| self.errors.get(p)),
        })
    }

    /// `status`: which egress mechanism is active, and why.
    pub fn status(&self) -> Value {
        json!({
            "egress": self.egress_mode,
            "ingress": "token-bucket",
            "reason": self.reason,
            "limited_endpoints": self.applied.values().filter(|l| **l != Limits::default()).count(),
            "refused": self.errors.values().collect::<Vec<_>>(),
        })
    }
}

/// fq on every device, or the token bucket (and why).
async fn egress_mode(nl: &net::Netlink, devices: &[String]) -> Result<(EgressMode, String)> {
    if devices.is_empty() {
        return Ok((
            EgressMode::TokenBucket,
            "no --device to pace on: egress uses the token bucket".into(),
        ));
    }
    for d in devices {
        let i = net::links::index(nl, d)
            .await?
            .with_context(|| format!("--device {d}: no such device"))?;
        let horizon_us = (HORIZON_NS / 1000) as u32;
        if !net::qdisc::set_fq(nl, i, horizon_us)
            .await
            .with_context(|| format!("fq on {d}"))?
        {
            return Ok((
                EgressMode::TokenBucket,
                format!(
                    "the kernel has no sch_fq (fq refused on {d}): egress uses the token bucket"
                ),
            ));
        }
    }
    Ok((
        EgressMode::EdtFq,
        format!("fq set on {}: egress is paced (EDT)", devices.join(", ")),
    ))
}

impl CniAgent {
    /// Applies the annotations of every endpoint's pod (the manifests folder is read once).
    pub fn sync_bandwidth(&mut self) {
        if self.bandwidth.is_none() {
            return;
        }
        let folder = match (&self.pods, &self.manifests) {
            (None, Some(dir)) => Some(pod_annotations_of_folder(dir)),
            _ => None,
        };
        let eps: Vec<(u32, u32, Option<String>)> = self
            .ipam
            .entries()
            .map(|(_, e)| (e.data.id, e.data.host_ifindex, e.data.pod.clone()))
            .collect();
        for (id, ifindex, pod) in eps {
            let Some(pod) = pod else { continue };
            let ann = match (&self.pods, &folder) {
                (Some(store), _) => pod_annotations_of_store(store, &pod),
                (None, Some(f)) => f.get(&pod).cloned(),
                (None, None) => None,
            };
            // A pod not (yet) known keeps what it has.
            let Some(ann) = ann else { continue };
            let bw = self.bandwidth.as_mut().expect("checked");
            if let Err(e) = bw.apply(id, ifindex, &pod, &ann) {
                warn!("bandwidth: {e:#}");
            }
        }
    }
}

fn pod_annotations_of_store(
    pods: &k8s::api_source::PodStore,
    key: &str,
) -> Option<BTreeMap<String, String>> {
    let (ns, name) = key.split_once('/')?;
    k8s::api_source::pod_annotations(pods, ns, name)
}

fn pod_annotations_of_folder(dir: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let Ok(m) = k8s::manifests::read_dir(dir) else {
        return BTreeMap::new();
    };
    m.pods
        .into_iter()
        .filter_map(|(_, p)| {
            let md = p.metadata;
            let key = format!(
                "{}/{}",
                md.namespace.as_deref().unwrap_or("default"),
                md.name?
            );
            Some((key, md.annotations.unwrap_or_default()))
        })
        .collect()
}

/// Follows the annotations: every `every` the endpoints' pods are looked up again.
pub fn spawn(cni: SharedCni, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            cni.lock().await.sync_bandwidth();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn annotations_give_rates_in_bits() {
        let l = limits(
            "default/a",
            &ann(&[(EGRESS_ANNOTATION, "10M"), (INGRESS_ANNOTATION, "1G")]),
        )
        .unwrap();
        assert_eq!(l.egress, Some(10_000_000));
        assert_eq!(l.ingress, Some(1_000_000_000));
        assert_eq!(limits("default/a", &ann(&[])).unwrap(), Limits::default());
    }

    #[test]
    fn bad_values_name_the_pod_and_annotation() {
        let e = limits("ns/web", &ann(&[(INGRESS_ANNOTATION, "fast")])).unwrap_err();
        assert!(
            e.contains("pod ns/web") && e.contains(INGRESS_ANNOTATION),
            "{e}"
        );
        let e = limits("ns/web", &ann(&[(EGRESS_ANNOTATION, "10")])).unwrap_err();
        assert!(
            e.contains("out of range") && e.contains(EGRESS_ANNOTATION),
            "{e}"
        );
        let e = limits("ns/web", &ann(&[(EGRESS_ANNOTATION, "2P")])).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
    }

    #[test]
    fn the_bucket_holds_two_gso_packets_or_250ms() {
        let slow = settings(500_000, MODE_BUCKET, 1);
        assert_eq!(slow.rate, 62_500);
        assert_eq!(slow.burst_ns, slow.cost_ns(MIN_BURST_BYTES));
        assert_eq!(slow.mark_ns, slow.burst_ns / 2);
        let ten = settings(10_000_000, MODE_BUCKET, 1);
        assert_eq!(ten.burst_ns, BURST_TIME_NS);
        let fast = settings(10_000_000_000, MODE_EDT, 1);
        assert_eq!(fast.burst_ns, BURST_TIME_NS);
        assert_eq!(fast.horizon_ns, HORIZON_NS);
    }
}
