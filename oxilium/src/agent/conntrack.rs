//! Conntrack and SNAT settings of both roles: the node agent's flags (the edge LB reads the same
//! settings from lb.yaml's `conntrack:` and `snat:`), the SNAT port range checked against the
//! host's own ephemeral ports, and the map sizes set before the objects load. See
//! docs/edge-lb.md ("Conntrack", "SNAT ports") and docs/config.md.
use anyhow::{Context, Result, bail};
use lb::config::{Conntrack, DEFAULT_MAP_ENTRIES, MAP_ENTRIES_RANGE, PortRange};
use std::time::Duration;
use tracing::info;

/// `--role node`: conntrack timeouts, map sizes and the SNAT port range (NodePort SNAT and the
/// pod path). Durations as in lb.yaml (`30s`, `2m`, `24h`), whole seconds.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CtFlags {
    /// --role node: conntrack map size (an LRU: when full, the least recently used flow goes).
    #[arg(long, default_value_t = DEFAULT_MAP_ENTRIES)]
    pub ct_max_entries: u32,
    /// --role node: SNAT map size.
    #[arg(long, default_value_t = DEFAULT_MAP_ENTRIES)]
    pub snat_max_entries: u32,
    /// --role node --cni: the policy's conntrack size (an LRU of the flows the pods' policies
    /// let through, one entry per flow and pod; an evicted flow is checked again).
    #[arg(long, default_value_t = crate::bpf::sizes::DEFAULT_POLICY_CT_ENTRIES, requires = "cni")]
    pub policy_ct_max_entries: u32,
    /// --role node: the socket LB's reverse translations of unconnected UDP (an LRU of
    /// (socket, backend) pairs: without its entry a reply shows the backend's address).
    #[arg(long, default_value_t = crate::bpf::sizes::DEFAULT_SOCK_REVNAT_ENTRIES)]
    pub sock_revnat_max_entries: u32,
    /// --role node: SNAT source ports MIN-MAX (default: the largest block of 1024-65535 outside
    /// the node's ip_local_port_range; a range overlapping it is added to ip_local_reserved_ports).
    #[arg(long)]
    pub snat_port_range: Option<String>,
    /// --role node: idle timeout of a TCP flow whose SYN got no reply yet [default: 60s].
    #[arg(long)]
    pub ct_timeout_tcp_syn: Option<String>,
    /// --role node: idle timeout of an established TCP flow [default: 24h, as kube-proxy sets].
    #[arg(long)]
    pub ct_timeout_tcp_established: Option<String>,
    /// --role node: idle timeout of a TCP flow with a FIN in one direction [default: 120s].
    #[arg(long)]
    pub ct_timeout_tcp_fin: Option<String>,
    /// --role node: idle timeout of a TCP flow closed by RST or FINs both ways [default: 10s].
    #[arg(long)]
    pub ct_timeout_tcp_close: Option<String>,
    /// --role node: idle timeout of an unreplied UDP flow [default: 30s].
    #[arg(long)]
    pub ct_timeout_udp: Option<String>,
    /// --role node: idle timeout of a replied UDP flow [default: 120s].
    #[arg(long)]
    pub ct_timeout_udp_replied: Option<String>,
}

fn timeout(flag: &str, v: &Option<String>, slot: &mut Duration) -> Result<()> {
    let Some(text) = v else {
        return Ok(());
    };
    let d = lb::config::duration::parse(text).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))?;
    if d < Duration::from_secs(1) || d.subsec_nanos() != 0 || d.as_secs() > u64::from(u32::MAX) {
        bail!("--{flag}: must be whole seconds, 1s..=4294967295s, got {text}");
    }
    *slot = d;
    Ok(())
}

fn entries(flag: &str, v: u32) -> Result<u32> {
    if !MAP_ENTRIES_RANGE.contains(&v) {
        bail!(
            "--{flag}: must be {}..={}, got {v}",
            MAP_ENTRIES_RANGE.start(),
            MAP_ENTRIES_RANGE.end()
        );
    }
    Ok(v)
}

impl CtFlags {
    /// The settings the flags give (defaults where absent), or an error naming the flag.
    pub fn settings(&self) -> Result<(Conntrack, u32, Option<PortRange>)> {
        let mut c = Conntrack {
            max_entries: entries("ct-max-entries", self.ct_max_entries)?,
            ..Default::default()
        };
        let t = &mut c.timeouts;
        timeout(
            "ct-timeout-tcp-syn",
            &self.ct_timeout_tcp_syn,
            &mut t.tcp_syn,
        )?;
        timeout(
            "ct-timeout-tcp-established",
            &self.ct_timeout_tcp_established,
            &mut t.tcp_established,
        )?;
        timeout(
            "ct-timeout-tcp-fin",
            &self.ct_timeout_tcp_fin,
            &mut t.tcp_fin,
        )?;
        timeout(
            "ct-timeout-tcp-close",
            &self.ct_timeout_tcp_close,
            &mut t.tcp_close,
        )?;
        timeout("ct-timeout-udp", &self.ct_timeout_udp, &mut t.udp)?;
        timeout(
            "ct-timeout-udp-replied",
            &self.ct_timeout_udp_replied,
            &mut t.udp_replied,
        )?;
        let snat_entries = entries("snat-max-entries", self.snat_max_entries)?;
        let ports = match &self.snat_port_range {
            None => None,
            Some(s) => {
                let r = k8s::per_node::parse_port_range(s)
                    .map_err(|e| anyhow::anyhow!("--snat-port-range: {e}"))?;
                Some(PortRange {
                    min: *r.start(),
                    max: *r.end(),
                })
            }
        };
        Ok((c, snat_entries, ports))
    }
}

impl CtFlags {
    /// `--policy-ct-max-entries` and `--sock-revnat-max-entries`, or an error naming the flag.
    pub fn lru_entries(&self) -> Result<(u32, u32)> {
        Ok((
            entries("policy-ct-max-entries", self.policy_ct_max_entries)?,
            entries("sock-revnat-max-entries", self.sock_revnat_max_entries)?,
        ))
    }
}

const LOCAL_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// An error when the SNAT range `r` (the setting `what`) overlaps one of `keep_out`: a
/// backend's reply to such a port would be taken for a new flow to the frontend there.
pub fn check_keep_out(r: PortRange, what: &str, keep_out: &[(PortRange, &str)]) -> Result<()> {
    for (other, name) in keep_out {
        if let Some(o) = r.overlap(other) {
            bail!(
                "{what} {r} overlaps {name} {other} (ports {o}): replies to those ports would be taken for new flows to the frontends there"
            );
        }
    }
    Ok(())
}

/// The host's ephemeral port range in the agent's network namespace.
pub fn local_port_range() -> Result<PortRange> {
    let text =
        std::fs::read_to_string(LOCAL_RANGE).with_context(|| format!("reading {LOCAL_RANGE}"))?;
    let mut it = text.split_whitespace().map(|s| s.parse::<u16>());
    match (it.next(), it.next()) {
        (Some(Ok(min)), Some(Ok(max))) if min <= max => Ok(PortRange { min, max }),
        _ => bail!("{LOCAL_RANGE}: unexpected content {text:?}"),
    }
}

/// The SNAT port range to use, such that the host's own sockets (health probes, anything the
/// LB box or node connects from its address) never pick a SNAT'ed flow's port: `configured`, with
/// its overlap with `ip_local_port_range` added to `ip_local_reserved_ports`; else the largest
/// block outside `ip_local_port_range`. `keep_out` are ranges the SNAT ports must never overlap,
/// each with the setting that names it (on a node, the NodePort range: a backend's reply to the
/// node's address and a NodePort would be taken for a new flow to that NodePort): left out of the
/// default, an error when `configured` overlaps them. `what` names the setting in errors.
pub fn snat_ports(
    configured: Option<PortRange>,
    what: &str,
    keep_out: &[(PortRange, &str)],
) -> Result<PortRange> {
    let local = local_port_range()?;
    let Some(r) = configured else {
        let mut excluded = vec![local];
        excluded.extend(keep_out.iter().map(|(r, _)| *r));
        let r = PortRange::outside(&excluded).with_context(|| {
            format!(
                "{what}: ip_local_port_range {local} leaves fewer than 1024 ports outside it: set {what}"
            )
        })?;
        info!(%r, %local, "SNAT ports: outside the host's ephemeral range");
        return Ok(r);
    };
    check_keep_out(r, what, keep_out)?;
    if let Some(o) = r.overlap(&local) {
        let old =
            std::fs::read_to_string(RESERVED).with_context(|| format!("reading {RESERVED}"))?;
        let old = old.trim();
        let new = if old.is_empty() {
            o.to_string()
        } else {
            format!("{old},{o}")
        };
        std::fs::write(RESERVED, &new)
            .with_context(|| format!("{what}: reserving {o} in {RESERVED}"))?;
        info!(%r, %local, reserved = %o, "SNAT ports overlap the host's ephemeral range: reserved");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_name_themselves_in_errors() {
        let f = CtFlags {
            ct_max_entries: DEFAULT_MAP_ENTRIES,
            snat_max_entries: DEFAULT_MAP_ENTRIES,
            ct_timeout_tcp_established: Some("500ms".into()),
            ..Default::default()
        };
        let e = f.settings().unwrap_err().to_string();
        assert!(e.contains("--ct-timeout-tcp-established"), "{e}");
        let f = CtFlags {
            ct_max_entries: 5,
            snat_max_entries: DEFAULT_MAP_ENTRIES,
            ..Default::default()
        };
        assert!(
            f.settings()
                .unwrap_err()
                .to_string()
                .contains("--ct-max-entries")
        );
        let f = CtFlags {
            ct_max_entries: DEFAULT_MAP_ENTRIES,
            snat_max_entries: DEFAULT_MAP_ENTRIES,
            snat_port_range: Some("9-1".into()),
            ..Default::default()
        };
        assert!(
            f.settings()
                .unwrap_err()
                .to_string()
                .contains("--snat-port-range")
        );
        let f = CtFlags {
            ct_max_entries: 4096,
            snat_max_entries: 2048,
            ct_timeout_udp: Some("5s".into()),
            snat_port_range: Some("40000-40100".into()),
            ..Default::default()
        };
        let e = f.lru_entries().unwrap_err().to_string();
        assert_eq!(e, "--policy-ct-max-entries: must be 1024..=16777216, got 0");
        let g = CtFlags {
            policy_ct_max_entries: 2048,
            sock_revnat_max_entries: 1 << 25,
            ..Default::default()
        };
        let e = g.lru_entries().unwrap_err().to_string();
        assert_eq!(
            e,
            "--sock-revnat-max-entries: must be 1024..=16777216, got 33554432"
        );
        let (c, s, p) = f.settings().unwrap();
        assert_eq!((c.max_entries, s), (4096, 2048));
        assert_eq!(c.timeouts.to_abi().udp_s, 5);
        assert_eq!(
            p,
            Some(PortRange {
                min: 40000,
                max: 40100
            })
        );
    }
}
