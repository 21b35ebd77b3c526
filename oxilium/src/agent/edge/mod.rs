//! The edge LB role (`--role lb`): XDP service translation on `--iface`, kept equal to the config
//! file (validated whole, then applied; an invalid file changes nothing) and to the backends' health.
//! The file is watched through its folder (see [`super::watch`]): in-place edits and a new file
//! renamed over it are applied, debounced by `--watch-ms`.
pub mod config_model;

use super::watch::{Stamp, Watch};
use super::{AgentArgs, Shared, apply_model};
use crate::bpf::{lb_maps::KernelMaps, loader};
use abi::lb::LbConfig;
use anyhow::{Context, Result, bail};
use aya::{Ebpf, programs::XdpMode};
use config_model::HealthKey;
use lb::config::Config;
use lb::{compile, reconcile::Reconciler};
use std::{collections::HashMap, path::Path, time::Duration};
use tracing::{error, info, warn};

pub(super) async fn start(args: &AgentArgs, state: &Shared) -> Result<Ebpf> {
    let path = args
        .config
        .as_ref()
        .context("--config is required with --role lb")?;
    // Validate everything before touching the kernel.
    let cfg = lb::config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let model = config_model::model(&cfg, &HashMap::new());
    compile::compile(&model)?;
    let lb_config = lb_config(&cfg, &args.iface).await?;

    crate::sysctl::prepare_lb(&args.iface)?;
    let mode = match args.xdp_mode {
        super::XdpAttach::Native => XdpMode::Driver,
        super::XdpAttach::Generic => XdpMode::Skb,
    };
    let mut ebpf = loader::load_xdp(&args.pin_dir, &args.iface, mode)?;
    let mut maps = KernelMaps::from_ebpf(&mut ebpf)?;
    maps.set_config(&lb_config)?;
    let mut st = state.lock().unwrap();
    st.reconciler = Some(Reconciler::open(maps)?);
    apply_model(&mut st, model)?;
    st.config = Some(cfg);
    Ok(ebpf)
}

/// The datapath's global settings: SNAT / tunnel source addresses and the SNAT port range.
async fn lb_config(cfg: &Config, ifaces: &[String]) -> Result<LbConfig> {
    let (mut v4, mut v6) = (cfg.snat.ipv4, cfg.snat.ipv6);
    let nl = net::Netlink::connect()?;
    for i in ifaces {
        let a = net::addresses::first_routable(&nl, i).await?;
        v4 = v4.or(a.v4);
        v6 = v6.or(a.v6);
    }
    let needs_v4 = cfg
        .services
        .iter()
        .any(|s| s.backends.iter().any(|b| b.address.is_ipv4()));
    let needs_v6 = cfg
        .services
        .iter()
        .any(|s| s.backends.iter().any(|b| b.address.is_ipv6()));
    if needs_v4 && v4.is_none() {
        bail!("snat.ipv4: not set and no IPv4 address on {ifaces:?}");
    }
    if needs_v6 && v6.is_none() {
        bail!("snat.ipv6: not set and no global IPv6 address on {ifaces:?}");
    }
    let ports = super::conntrack::snat_ports(cfg.snat.ports, "snat.ports", &[])?;
    Ok(LbConfig {
        snat_v4: v4
            .map(|a| abi::lb::v4_mapped(a.octets()))
            .unwrap_or_default(),
        snat_v6: v6.map(|a| a.octets()).unwrap_or_default(),
        snat_port_min: ports.min,
        snat_port_max: ports.max,
        ready: 1,
        timeouts: cfg.conntrack.timeouts.to_abi(),
    })
}

/// After a reload: rewrites `OXI_CONFIG` when the conntrack timeouts or the SNAT ports changed
/// (the map sizes and SNAT addresses are read at start only).
fn reload_settings(st: &mut super::State, old: &Config, new: &Config) -> Result<()> {
    if (old.max_services, old.max_backends) != (new.max_services, new.max_backends) {
        warn!("max_services / max_backends changes apply after a restart without pins");
    }
    if old.conntrack.timeouts == new.conntrack.timeouts && old.snat.ports == new.snat.ports {
        return Ok(());
    }
    if old.conntrack.max_entries != new.conntrack.max_entries
        || old.snat.max_entries != new.snat.max_entries
    {
        warn!("conntrack / snat max_entries changes apply after a restart without pins");
    }
    let rec = st.reconciler.as_mut().context("datapath not loaded")?;
    let mut c = rec.datapath().config()?;
    let ports = super::conntrack::snat_ports(new.snat.ports, "snat.ports", &[])?;
    c.snat_port_min = ports.min;
    c.snat_port_max = ports.max;
    c.timeouts = new.conntrack.timeouts.to_abi();
    rec.datapath_mut().set_config(&c)?;
    info!(%ports, timeouts = ?c.timeouts, "conntrack settings updated");
    Ok(())
}

/// Re-applies the datapath from the current config and health.
fn reapply(state: &Shared) -> Result<()> {
    let mut st = state.lock().unwrap();
    let Some(cfg) = st.config.clone() else {
        return Ok(());
    };
    let model = config_model::model(&cfg, &st.health);
    apply_model(&mut st, model)
}

pub(super) async fn run(args: &AgentArgs, state: &Shared) -> Result<()> {
    let path = args.config.clone().expect("checked in start");
    let (mut prober, mut events) = lb::health::Prober::<HealthKey>::new();
    {
        let st = state.lock().unwrap();
        prober.set_targets(config_model::health_targets(
            st.config.as_ref().expect("loaded"),
        ));
    }
    // The watch is set before the stamp is taken: a change from now on is seen.
    let mut watch = Watch::file(&path, Duration::from_millis(args.watch_ms.max(50)))?;
    let mut last = Stamp::file(&path);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    let mut reap = tokio::time::interval(super::REAP_EVERY);
    let mut reaper = super::Reaper::default();
    loop {
        tokio::select! {
            _ = heartbeat.tick() => crate::metrics::health().tick(),
            _ = reap.tick() => reaper.start(state),
            _ = watch.changed() => {
                let now = Stamp::file(&path);
                if now != last {
                    last = now;
                    reload(&path, state, &mut prober);
                }
            }
            Some(ev) = events.recv() => {
                info!(service = %ev.id.0, backend = %ev.id.1, healthy = ev.healthy, "health changed");
                state.lock().unwrap().health.insert(ev.id, ev.healthy);
                if let Err(e) = reapply(state) {
                    error!("applying health change: {e:#}");
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    info!("agent stopping; the datapath keeps running from its pinned maps and links");
    Ok(())
}

/// Loads a changed config file; an invalid file changes nothing (the error names field and line).
fn reload(path: &Path, state: &Shared, prober: &mut lb::health::Prober<HealthKey>) {
    let cfg = match lb::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            warn!("config not applied: {e}");
            state.lock().unwrap().last_error = Some(e.to_string());
            return;
        }
    };
    let model = config_model::model(&cfg, &state.lock().unwrap().health);
    if let Err(e) = compile::compile(&model) {
        warn!("config not applied: {e:#}");
        state.lock().unwrap().last_error = Some(format!("{e:#}"));
        return;
    }
    prober.set_targets(config_model::health_targets(&cfg));
    {
        let mut st = state.lock().unwrap();
        // Forget the health of backends that left.
        let keep: std::collections::HashSet<HealthKey> = config_model::health_targets(&cfg)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        st.health.retain(|k, _| keep.contains(k));
        if let Some(old) = st.config.clone()
            && let Err(e) = reload_settings(&mut st, &old, &cfg)
        {
            error!("applying conntrack settings: {e:#}");
            st.last_error = Some(format!("{e:#}"));
        }
        st.config = Some(cfg);
        st.reloads += 1;
        st.last_error = None;
    }
    match reapply(state) {
        Ok(()) => info!("config reloaded"),
        Err(e) => {
            error!("applying config: {e:#}");
            state.lock().unwrap().last_error = Some(format!("{e:#}"));
        }
    }
}
