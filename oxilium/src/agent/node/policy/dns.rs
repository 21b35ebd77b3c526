//! The DNS proxy in the agent: the `proxy` crate's DNS proxy with the node's policy behind it, on
//! the redirect's listeners (the engine's DNS proxy port on `127.0.0.1` and `[::1]`, where the
//! endpoint programs hand the port-53 flows that DNS rules redirect; with `--l7-proxy`) and, with
//! `--dns-proxy-address`, on an address pods send to. A query is checked against the sending
//! endpoint's DNS rules (`Engine::dns_verdict`); an answer's addresses are learnt by the engine,
//! and the policy maps and the ipcache entries they change are written before the proxy releases
//! the answer. Expired addresses are forgotten by a task that looks twice a second.
use super::PolicyAgent;
use crate::agent::node::endpoints::SharedCni;
use anyhow::{Context, Result};
use policy::{api::Protocol, dns::DnsVerdict};
use proxy::dns::{Config, DnsProxy, Learnt, Query, Transport, Verdict};
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};
use tracing::{info, warn};

#[derive(clap::Args, Debug, Clone)]
pub struct DnsFlags {
    /// --cni: run the DNS proxy on this address (UDP and TCP): queries of endpoints are checked
    /// against their DNS rules and the answers feed toFQDNs.
    #[arg(long, value_name = "ADDR:PORT")]
    pub dns_proxy_address: Option<SocketAddr>,
    /// Send every query to this server instead of the server the pod asked (its original
    /// destination; the pod's DNS rules are still checked for the server it asked). Needed by
    /// `--dns-proxy-address` when pods send to that address (their queries carry no other
    /// destination).
    #[arg(long, value_name = "ADDR:PORT")]
    pub dns_proxy_upstream: Option<SocketAddr>,
    /// The DNS proxy: how long to wait for the server's answer (milliseconds).
    #[arg(long, default_value_t = 2000)]
    pub dns_proxy_timeout_ms: u64,
    /// Addresses learnt from DNS answers stay allowed at least this long (seconds); shorter TTLs
    /// are raised to it.
    #[arg(long, default_value_t = policy::engine::DEFAULT_FQDN_MIN_TTL.as_secs())]
    pub tofqdns_min_ttl: u64,
}

impl Default for DnsFlags {
    /// No proxy; the flags' defaults.
    fn default() -> DnsFlags {
        DnsFlags {
            dns_proxy_address: None,
            dns_proxy_upstream: None,
            dns_proxy_timeout_ms: 2000,
            tofqdns_min_ttl: policy::engine::DEFAULT_FQDN_MIN_TTL.as_secs(),
        }
    }
}

/// The node's policy as the proxy sees it.
struct NodeDns {
    cni: SharedCni,
}

impl proxy::dns::Policy for NodeDns {
    async fn check(&self, q: &Query) -> Verdict {
        let proto = match q.transport {
            Transport::Udp => Protocol::Udp,
            Transport::Tcp => Protocol::Tcp,
        };
        let a = self.cni.lock().await;
        match a.policy.engine.dns_verdict(
            q.src.ip(),
            q.dst.ip(),
            proto,
            q.dst.port(),
            &q.question.name,
        ) {
            DnsVerdict::Allow => Verdict::Allow,
            DnsVerdict::Refuse(why) => Verdict::Refuse(why),
        }
    }

    async fn learn(&self, q: &Query, l: Learnt) {
        let mut a = self.cni.lock().await;
        if let Err(e) = a.policy.learn_fqdn(&l) {
            warn!(src = %q.src, names = ?l.names, "dns proxy: applying the answer: {e:#}");
            a.policy.last_error = Some(format!("dns proxy: {e:#}"));
        }
    }
}

impl PolicyAgent {
    /// An answer: the engine learns it, the maps and ipcache entries it changes are written.
    fn learn_fqdn(&mut self, l: &Learnt) -> Result<()> {
        let now = Instant::now();
        let mut touched = BTreeSet::new();
        let mut ips = BTreeSet::new();
        for name in &l.names {
            let up = self.engine.learn_fqdn(name, &l.ips, l.ttl, now);
            touched.extend(up.deltas.into_iter().map(|d| d.endpoint));
            ips.extend(up.ipcache);
        }
        self.apply_fqdn(&touched, ips)
    }

    /// Forgets what expired.
    fn expire_fqdn(&mut self) -> Result<()> {
        let up = self.engine.expire_fqdn(Instant::now());
        if up.ipcache.is_empty() && up.deltas.is_empty() {
            return Ok(());
        }
        let touched = up.deltas.into_iter().map(|d| d.endpoint).collect();
        self.apply_fqdn(&touched, up.ipcache.into_iter().collect())
    }

    /// Maps before the ipcache: an address's new identity is in every map before packets carry it;
    /// for an expired address the ipcache entry goes first, then the entries it used.
    fn apply_fqdn(
        &mut self,
        touched: &BTreeSet<String>,
        ips: BTreeSet<std::net::IpAddr>,
    ) -> Result<()> {
        let ips: Vec<_> = ips.into_iter().collect();
        self.sync_endpoints(Some(touched))?;
        self.write_ipcache_of(&ips)
    }
}

/// Starts the proxy on the redirect's listeners of proxy port `port` (IPv4 and IPv6): the
/// endpoint programs hand it the port-53 flows DNS rules redirect. Fails when a listener cannot
/// be bound (redirected DNS is then dropped).
pub fn start_redirect(cni: SharedCni, port: u16, flags: &DnsFlags) -> Result<()> {
    let policy = Arc::new(NodeDns { cni });
    for family in proxy::listener::Family::BOTH {
        match DnsProxy::bind_redirect(
            port,
            family,
            flags.dns_proxy_upstream,
            Duration::from_millis(flags.dns_proxy_timeout_ms),
            policy.clone(),
        ) {
            Ok(p) => {
                tokio::spawn(p.run());
            }
            Err(e) => crate::agent::node::l7::family_failed(
                family,
                &format!("the DNS proxy's redirect listeners on port {port} ({family:?})"),
                e,
            )?,
        }
    }
    info!(port, upstream = ?flags.dns_proxy_upstream, "DNS proxy listening for redirected flows");
    Ok(())
}

/// Starts the expiry task and, with `--dns-proxy-address`, the proxy there (transparent without
/// `--dns-proxy-upstream`: for flows handed over by a TPROXY rule).
pub fn spawn(cni: SharedCni, flags: &DnsFlags) -> Result<()> {
    spawn_expiry(cni.clone());
    let Some(listen) = flags.dns_proxy_address else {
        return Ok(());
    };
    let cfg = Config {
        listen,
        upstream: flags.dns_proxy_upstream,
        transparent: flags.dns_proxy_upstream.is_none(),
        timeout: Duration::from_millis(flags.dns_proxy_timeout_ms),
    };
    let p = DnsProxy::bind(cfg, Arc::new(NodeDns { cni: cni.clone() }))
        .with_context(|| format!("--dns-proxy-address {listen}"))?;
    info!(address = %p.local_addr(), upstream = ?flags.dns_proxy_upstream, "DNS proxy listening");
    tokio::spawn(p.run());
    Ok(())
}

/// Forgets expired addresses, twice a second.
fn spawn_expiry(cni: SharedCni) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let mut a = cni.lock().await;
            if let Err(e) = a.policy.expire_fqdn() {
                warn!("toFQDNs expiry: {e:#}");
            }
        }
    });
}
