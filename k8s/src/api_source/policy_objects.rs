//! The objects network policy is computed from, followed in the API server: NetworkPolicies
//! (networking.k8s.io/v1), CiliumNetworkPolicies and CiliumClusterwideNetworkPolicies
//! (cilium.io/v2, read as untyped objects), Namespaces and every Pod. Each change is reported as
//! the whole set of objects (the consumer diffs them, as it does a re-read manifests folder),
//! once every kind has been listed, and at most every [`DEBOUNCE`] afterwards, in one fixed
//! order (kind, namespace, name), so every node reading the same objects numbers identities the
//! same way.
//!
//! A kind the server does not serve (404: the Cilium CRDs not installed) counts as listed and
//! empty, so NetworkPolicies are enforced in a cluster without the CRDs; its watch keeps retrying
//! with kube's backoff and picks the CRD up once it is installed.
use crate::manifests::{Object, Origin};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::warn;

/// Changes closer together than this are reported together.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// The kinds followed: (apiVersion, kind).
pub const KINDS: [(&str, &str); 5] = [
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("cilium.io/v2", "CiliumNetworkPolicy"),
    ("cilium.io/v2", "CiliumClusterwideNetworkPolicy"),
    ("v1", "Namespace"),
    ("v1", "Pod"),
];

/// (kind, namespace, name).
type Key = (&'static str, String, String);

enum Change {
    /// A kind's (re)list begins: what it lists next replaces what it had.
    Init(&'static str),
    Apply(&'static str, Value),
    Delete(&'static str, Value),
    /// A kind's list is complete (or the kind is not served).
    Listed(&'static str),
}

/// Starts the watchers; the receiver gets every object of the five kinds (as manifests objects
/// whose origin names the API object, `api:Kind/namespace/name`) after each batch of changes.
pub fn follow(client: Client) -> mpsc::UnboundedReceiver<Vec<Object>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ctx, crx) = mpsc::unbounded_channel();
    typed::<NetworkPolicy>(Api::all(client.clone()), KINDS[0].1, ctx.clone());
    for (kind, plural) in [
        (KINDS[1].1, "ciliumnetworkpolicies"),
        (KINDS[2].1, "ciliumclusterwidenetworkpolicies"),
    ] {
        let gvk = GroupVersionKind::gvk("cilium.io", "v2", kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        typed::<DynamicObject>(Api::all_with(client.clone(), &ar), kind, ctx.clone());
    }
    typed::<Namespace>(Api::all(client.clone()), KINDS[3].1, ctx.clone());
    typed::<Pod>(Api::all(client), KINDS[4].1, ctx);
    tokio::spawn(collect(crx, tx));
    rx
}

/// One kind's watcher, its events sent on as [`Change`]s.
fn typed<K>(api: Api<K>, kind: &'static str, tx: mpsc::UnboundedSender<Change>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
    K: Send + 'static,
{
    tokio::spawn(async move {
        let mut s = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut listed = false;
        let mut failing = false;
        while let Some(ev) = s.next().await {
            let c = match ev {
                Ok(Event::Init) => {
                    failing = false;
                    Change::Init(kind)
                }
                Ok(Event::InitApply(o)) | Ok(Event::Apply(o)) => {
                    Change::Apply(kind, serde_json::to_value(&o).unwrap_or_default())
                }
                Ok(Event::Delete(o)) => {
                    Change::Delete(kind, serde_json::to_value(&o).unwrap_or_default())
                }
                Ok(Event::InitDone) => {
                    listed = true;
                    Change::Listed(kind)
                }
                Err(e) => {
                    let missing = format!("{e:?}").contains("404");
                    if !failing {
                        // Once per outage (retried with backoff).
                        warn!(kind, "policy objects: {e}");
                        failing = true;
                    }
                    if missing && !listed {
                        // Not served: listed and empty until it is.
                        listed = true;
                        let _ = tx.send(Change::Init(kind));
                        Change::Listed(kind)
                    } else {
                        continue;
                    }
                }
            };
            if tx.send(c).is_err() {
                return;
            }
        }
    });
}

fn key(kind: &'static str, v: &Value) -> Key {
    let md = &v["metadata"];
    let s = |x: &Value| x.as_str().unwrap_or_default().to_string();
    (kind, s(&md["namespace"]), s(&md["name"]))
}

/// Keeps the objects and reports them after each batch of changes, once every kind is listed.
async fn collect(mut rx: mpsc::UnboundedReceiver<Change>, tx: mpsc::UnboundedSender<Vec<Object>>) {
    let mut objects: BTreeMap<Key, Value> = BTreeMap::new();
    // A kind being (re)listed: what it has listed so far.
    let mut listing: BTreeMap<&'static str, BTreeMap<Key, Value>> = BTreeMap::new();
    let mut listed: BTreeSet<&'static str> = BTreeSet::new();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        tokio::time::sleep(DEBOUNCE).await;
        while let Ok(c) = rx.try_recv() {
            batch.push(c);
        }
        for c in batch {
            match c {
                Change::Init(kind) => {
                    listing.insert(kind, BTreeMap::new());
                }
                Change::Apply(kind, v) => match listing.get_mut(kind) {
                    Some(l) => {
                        l.insert(key(kind, &v), v);
                    }
                    None => {
                        objects.insert(key(kind, &v), v);
                    }
                },
                Change::Delete(kind, v) => {
                    objects.remove(&key(kind, &v));
                }
                Change::Listed(kind) => {
                    let fresh = listing.remove(kind).unwrap_or_default();
                    objects.retain(|k, _| k.0 != kind);
                    objects.extend(fresh);
                    listed.insert(kind);
                }
            }
        }
        if listed.len() < KINDS.len() {
            continue;
        }
        let all = objects
            .iter()
            .map(|((kind, ns, name), v)| {
                let mut value = v.clone();
                let api_version = KINDS.iter().find(|k| k.1 == *kind).map(|k| k.0);
                value["apiVersion"] = api_version.unwrap_or_default().into();
                value["kind"] = (*kind).into();
                Object {
                    origin: Origin {
                        file: format!("api:{kind}/{ns}/{name}").into(),
                        line: 0,
                        item: None,
                    },
                    value,
                }
            })
            .collect();
        if tx.send(all).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default"}})
    }

    fn names(all: &[Object]) -> Vec<String> {
        all.iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o.kind(),
                    o.value["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    }

    /// Nothing before every kind is listed; a relist replaces what its kind had (objects deleted
    /// while the watch was down go); deletes and applies in between; every object carries its
    /// apiVersion and kind and names itself in its origin.
    #[tokio::test]
    async fn the_set_follows_lists_relists_and_events() {
        let (ctx, crx) = mpsc::unbounded_channel();
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(collect(crx, tx));
        let np = KINDS[0].1;
        ctx.send(Change::Init(np)).unwrap();
        ctx.send(Change::Apply(np, obj("a"))).unwrap();
        ctx.send(Change::Apply(np, obj("b"))).unwrap();
        ctx.send(Change::Listed(np)).unwrap();
        tokio::time::sleep(DEBOUNCE * 3).await;
        assert!(
            rx.try_recv().is_err(),
            "reported before every kind was listed"
        );
        for (_, kind) in &KINDS[1..] {
            ctx.send(Change::Init(kind)).unwrap();
            ctx.send(Change::Listed(kind)).unwrap();
        }
        let all = rx.recv().await.unwrap();
        assert_eq!(names(&all), ["NetworkPolicy/a", "NetworkPolicy/b"]);
        assert_eq!(all[0].api_version(), "networking.k8s.io/v1");
        assert_eq!(all[0].origin.to_string(), "api:NetworkPolicy/default/a:0");
        ctx.send(Change::Delete(np, obj("a"))).unwrap();
        ctx.send(Change::Apply(KINDS[1].1, obj("c"))).unwrap();
        let all = rx.recv().await.unwrap();
        assert_eq!(names(&all), ["CiliumNetworkPolicy/c", "NetworkPolicy/b"]);
        // A relist without b (deleted while disconnected) and with d.
        ctx.send(Change::Init(np)).unwrap();
        ctx.send(Change::Apply(np, obj("d"))).unwrap();
        ctx.send(Change::Listed(np)).unwrap();
        let all = rx.recv().await.unwrap();
        assert_eq!(names(&all), ["CiliumNetworkPolicy/c", "NetworkPolicy/d"]);
    }
}
