//! The policy agent's background work: the manifests folder or the API server's policy objects
//! followed, and the kvstore kept in step (watch events, this node's changes, keepalive, the
//! full sync).
use super::etcd;
use std::{path::PathBuf, time::Duration};
use tracing::warn;

/// Starts the policy's background work: the DNS proxy (with `--dns-proxy-address`), the
/// folder's policy objects followed, and with a kvstore [`kv_task`].
pub fn spawn_tasks(
    cni: crate::agent::node::endpoints::SharedCni,
    dir: Option<PathBuf>,
    watch_ms: u64,
    flags: &super::PolicyFlags,
) -> anyhow::Result<()> {
    super::dns::spawn(cni.clone(), &flags.dns)?;
    if let Some(dir) = dir {
        follow_folder(cni.clone(), dir, watch_ms);
    }
    tokio::spawn(kv_task(cni));
    Ok(())
}

/// How often the kvstore lease (15 s) is kept alive.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// With a kvstore: the other nodes' changes applied as the watch reports them, this node's
/// written when its endpoints change and with the lease's keepalive every [`KEEPALIVE`], and
/// the full sync every `--kvstore-sync-ms`.
async fn kv_task(cni: crate::agent::node::endpoints::SharedCni) {
    enum Why {
        Full,
        Local,
        Watch(Vec<etcd::WatchEvent>),
    }
    let (kick, events, every) = {
        let mut a = cni.lock().await;
        let Some(kv) = a.policy.kv.as_mut() else {
            return;
        };
        (kv.kicker(), kv.take_watch(), a.policy.flags.kvstore_sync_ms)
    };
    let Some(mut events) = events else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(every));
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    loop {
        let why = tokio::select! {
            _ = tick.tick() => Why::Full,
            _ = keepalive.tick() => Why::Local,
            _ = kick.notified() => Why::Local,
            ev = events.recv() => match ev {
                Some(ev) => {
                    let mut all = vec![ev];
                    while let Ok(ev) = events.try_recv() {
                        all.push(ev);
                    }
                    Why::Watch(all)
                }
                None => return,
            },
        };
        let mut a = cni.lock().await;
        let r = match why {
            Why::Full => a.policy.kv_sync(),
            Why::Local => a.policy.kv_publish(),
            Why::Watch(all) => a.policy.kv_apply(all),
        };
        if let Err(e) = r {
            warn!("kvstore: {e:#}");
            a.policy.last_error = Some(format!("kvstore: {e:#}"));
        }
    }
}

/// Applies the API server's policy objects (k8s::api_source::policy_objects) as they change.
pub fn follow_api(
    cni: crate::agent::node::endpoints::SharedCni,
    mut objects: tokio::sync::mpsc::UnboundedReceiver<Vec<k8s::manifests::Object>>,
) {
    tokio::spawn(async move {
        while let Some(all) = objects.recv().await {
            let mut a = cni.lock().await;
            let r = a.policy.apply_objects(all);
            match r {
                Ok(()) => a.policy.last_error = None,
                Err(e) => {
                    warn!("policy not applied: {e:#}");
                    a.policy.last_error = Some(format!("{e:#}"));
                }
            }
        }
    });
}

/// Re-reads the policy objects of the folder on every change (its own watch, debounced like the
/// services' by `--watch-ms`).
fn follow_folder(cni: crate::agent::node::endpoints::SharedCni, dir: PathBuf, watch_ms: u64) {
    tokio::spawn(async move {
        let every = Duration::from_millis(watch_ms.max(50));
        let mut watch = match crate::agent::watch::Watch::folder(&dir, every) {
            Ok(w) => w,
            Err(e) => {
                warn!("policy: watching {}: {e:#}", dir.display());
                return;
            }
        };
        // A change between the first read and the watch is picked up here.
        let mut last = crate::agent::watch::Stamp::folder(&dir);
        let _ = cni.lock().await.policy.reload_reporting();
        loop {
            watch.changed().await;
            let now = crate::agent::watch::Stamp::folder(&dir);
            if now != last {
                last = now;
                let _ = cni.lock().await.policy.reload_reporting();
            }
        }
    });
}
