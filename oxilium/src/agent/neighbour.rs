//! Neighbour warm-up: bpf_fib_lookup only forwards to next hops whose MAC the kernel already
//! knows. For every new backend the agent asks the kernel to resolve the next hop towards it
//! ([`net::neighbours::resolve`]: `ip neigh replace ADDR dev DEV use`), before the first client
//! packet needs it. (Packets that still find no neighbour go up the stack, which resolves and
//! forwards them; see docs/edge-lb.md.)
//!
//! The datapath is applied under the agent state's lock, so [`Warmer::warm`] only queues the
//! addresses: a task of the agent's runtime sends the netlink requests, one at a time.
use std::{
    collections::HashSet,
    net::IpAddr,
    sync::{Arc, Mutex},
};
use tokio::sync::mpsc;
use tracing::warn;

#[derive(Default)]
pub struct Warmer {
    addrs: Arc<Mutex<Addrs>>,
    queue: Option<mpsc::UnboundedSender<IpAddr>>,
}

#[derive(Default)]
struct Addrs {
    /// Whose resolution the kernel accepted: not asked for again.
    done: HashSet<IpAddr>,
    /// Queued and not tried yet: not queued twice.
    queued: HashSet<IpAddr>,
}

impl Warmer {
    /// Queues the addresses not warmed (nor queued) yet. Outside a tokio runtime nothing is
    /// warmed.
    pub fn warm(&mut self, addrs: impl IntoIterator<Item = IpAddr>) {
        let mut st = self.addrs.lock().unwrap();
        let new: Vec<IpAddr> = addrs
            .into_iter()
            .filter(|a| !st.done.contains(a) && !st.queued.contains(a))
            .collect();
        if new.is_empty() {
            return;
        }
        if self.queue.as_ref().is_none_or(|q| q.is_closed()) {
            // A task that stopped (no netlink socket) took what it had queued along.
            st.queued.clear();
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let (tx, rx) = mpsc::unbounded_channel();
            rt.spawn(resolve_queued(rx, self.addrs.clone()));
            self.queue = Some(tx);
        }
        let queue = self.queue.as_ref().expect("just set");
        for a in new {
            if queue.send(a).is_ok() {
                st.queued.insert(a);
            }
        }
    }
}

/// Resolves the queued addresses; one that fails (no route, for now) is tried again when it is
/// queued again. Stops when no netlink socket can be opened (the next address queued starts
/// another task).
async fn resolve_queued(mut rx: mpsc::UnboundedReceiver<IpAddr>, addrs: Arc<Mutex<Addrs>>) {
    let nl = match net::Netlink::connect() {
        Ok(nl) => nl,
        Err(e) => return warn!("neighbour warm-up: {e}"),
    };
    while let Some(a) = rx.recv().await {
        let ok = net::neighbours::resolve(&nl, a).await.is_ok();
        let mut st = addrs.lock().unwrap();
        st.queued.remove(&a);
        if ok {
            st.done.insert(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_queued_outside_a_runtime() {
        let mut w = Warmer::default();
        w.warm(["192.0.2.1".parse().unwrap()]);
        assert!(w.queue.is_none());
        assert!(w.addrs.lock().unwrap().queued.is_empty());
    }
}
