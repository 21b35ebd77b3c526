//! The Kubernetes API source against a fake API server (tests/support/fake_api.rs): initial list
//! and the single "synced", watch MODIFIED / DELETED, bookmarks, and 410 Gone → relist.
mod support;

use k8s::api_source::{Changes, KubeFlags, KubeSource, SharedCluster, SourceEvent, Stores};
use k8s::{Cluster, ObjectKey, Options, compile_node, output};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use support::fake_api::{FakeApi, Res};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Every wait is bounded by this.
const WAIT: Duration = Duration::from_secs(15);

fn node(name: &str, ip: &str, zone: &str) -> Value {
    json!({"metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
}

fn service(name: &str, typ: &str, ip: &str, port: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": "default",
                        "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
           "spec": {"type": typ, "clusterIP": ip, "clusterIPs": [ip], "ports": [port]}})
}

fn slice(name: &str, svc: &str, port: Value, eps: &[(&str, &str)]) -> Value {
    let eps: Vec<Value> = eps
        .iter()
        .map(|(ip, node)| {
            json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": true}})
        })
        .collect();
    json!({"metadata": {"name": name, "namespace": "default",
                        "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4", "ports": [port], "endpoints": eps})
}

fn host_port_pod(name: &str, node: &str, ip: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "default",
                        "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
           "spec": {"nodeName": node, "containers": [{"name": "c",
                    "ports": [{"containerPort": 443, "hostPort": 8443}]}]},
           "status": {"phase": "Running", "podIP": ip}})
}

fn web_slice(eps: &[(&str, &str)]) -> Value {
    slice("web-1", "web", json!({"name": "http", "port": 8080}), eps)
}

fn dns_service(port: u16) -> Value {
    let p = json!({"name": "dns", "port": port, "protocol": "UDP", "targetPort": 53});
    service("dns", "ClusterIP", "10.96.0.53", p)
}

/// Two nodes; web (NodePort, two endpoints), dns (UDP); a HostPort pod on each node.
fn seed(api: &FakeApi) {
    api.put(Res::Nodes, node("a", "192.168.0.1", "z1"));
    api.put(Res::Nodes, node("b", "192.168.0.2", "z2"));
    let web = json!({"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080});
    api.put(Res::Services, service("web", "NodePort", "10.96.0.10", web));
    api.put(Res::Services, dns_service(53));
    api.put(
        Res::EndpointSlices,
        web_slice(&[("10.0.0.1", "a"), ("10.0.0.2", "b")]),
    );
    let dns = json!({"name": "dns", "port": 53, "protocol": "UDP"});
    api.put(
        Res::EndpointSlices,
        slice("dns-1", "dns", dns, &[("10.0.1.1", "b")]),
    );
    api.put(Res::Pods, host_port_pod("hp-a", "a", "10.0.0.9"));
    api.put(Res::Pods, host_port_pod("hp-b", "b", "10.0.0.19"));
}

/// One line per frontend of node `node`: `TYPE address:port/PROTO -> backend,...`.
fn summary(c: &Cluster, node: &str) -> Vec<String> {
    let nf = compile_node(c, node, &Options::default()).unwrap();
    let json = output::frontends_json(&nf.frontends);
    let s = |v: &Value| v.as_str().unwrap().to_string();
    json.as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let b: Vec<String> = f["backends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| format!("{}:{}", s(&b["address"]), b["port"]))
                .collect();
            let (t, a, p, pr) = (
                s(&f["type"]),
                s(&f["address"]),
                &f["port"],
                s(&f["protocol"]),
            );
            format!("{t} {a}:{p}/{pr} -> {}", b.join(","))
        })
        .collect()
}

fn keys(names: &[&str]) -> BTreeSet<ObjectKey> {
    names
        .iter()
        .map(|n| ObjectKey::new("default", *n))
        .collect()
}

struct Harness {
    api: FakeApi,
    cluster: SharedCluster,
    stores: Stores,
    events: mpsc::UnboundedReceiver<SourceEvent>,
    task: JoinHandle<()>,
    synced: usize,
    errors: Vec<String>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Harness {
    /// Seeds a fake API server, starts the source for node "a" from `--kubeconfig`, and waits
    /// for "synced", which must be the first event.
    async fn start() -> Harness {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let api = FakeApi::start().await;
        seed(&api);
        let flags = KubeFlags {
            kubeconfig: Some(api.kubeconfig().to_path_buf()),
            node: Some("a".into()),
            ..Default::default()
        };
        let client = timeout(WAIT, flags.client()).await.unwrap().unwrap();
        let cluster = SharedCluster::default();
        let node = flags.node_name().unwrap();
        let source = KubeSource::new(client, cluster.clone(), Some(&node));
        let stores = source.stores();
        let (task, events) = source.spawn();
        let mut h = Harness {
            api,
            cluster,
            stores,
            events,
            task,
            synced: 0,
            errors: Vec::new(),
        };
        assert_eq!(h.next().await, SourceEvent::Synced);
        h.until_request("the four watches", |api| {
            Res::ALL.iter().all(|r| api.watching(*r) == 1)
        })
        .await;
        h
    }

    /// The next event other than an error (errors are kept in `self.errors`).
    async fn next(&mut self) -> SourceEvent {
        loop {
            let e = timeout(WAIT, self.events.recv())
                .await
                .expect("no source event in time")
                .expect("source ended");
            match e {
                SourceEvent::Error { resource, message } => {
                    self.errors.push(format!("{resource}: {message}"))
                }
                SourceEvent::Synced => {
                    self.synced += 1;
                    return e;
                }
                e => return e,
            }
        }
    }

    async fn changed(&mut self) -> Changes {
        match self.next().await {
            SourceEvent::Changed(c) => c,
            e => panic!("expected a change, got {e:?}"),
        }
    }

    fn summary(&self, node: &str) -> Vec<String> {
        summary(&self.cluster.read().unwrap(), node)
    }

    /// Waits (bounded) until `f` holds on the request log.
    async fn until_request(&self, what: &str, f: impl Fn(&FakeApi) -> bool) {
        let wait = async {
            while !f(&self.api) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}: {:#?}", self.api.requests()));
    }

    /// "synced" came exactly once, and the source is still running.
    fn finish(self) {
        assert_eq!(self.synced, 1, "synced once");
        assert!(!self.task.is_finished());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_list_fills_the_store_and_syncs_once() {
    let h = Harness::start().await;
    assert_eq!(
        h.summary("a"),
        [
            "ClusterIP 10.96.0.10:80/TCP -> 10.0.0.1:8080,10.0.0.2:8080",
            "ClusterIP 10.96.0.53:53/UDP -> 10.0.1.1:53",
            "HostPort 192.168.0.1:8443/TCP -> 10.0.0.9:443",
            "NodePort 192.168.0.1:30080/TCP -> 10.0.0.1:8080,10.0.0.2:8080",
        ]
    );
    {
        let c = h.cluster.read().unwrap();
        let svcs: BTreeSet<ObjectKey> = c.service_keys().cloned().collect();
        assert_eq!(svcs, keys(&["dns", "web"]));
        assert!(c.node("a").is_some() && c.node("b").is_some());
    }
    // Pods are watched for this node only: hp-b (node b) never reaches the store.
    let pods = h.api.requests();
    let pod_list = pods
        .iter()
        .find(|r| r.res == Some(Res::Pods) && !r.watch)
        .unwrap();
    assert_eq!(pod_list.query["fieldSelector"], "spec.nodeName=a");
    assert_eq!(h.stores.pods.state().len(), 1);
    assert!(h.summary("b").iter().all(|f| !f.starts_with("HostPort")));
    // Watches start from the list's version, with bookmarks.
    let watch = pods
        .iter()
        .find(|r| r.res == Some(Res::Services) && r.watch)
        .unwrap();
    assert_eq!(watch.query["allowWatchBookmarks"], "true");
    assert!(watch.query["resourceVersion"].parse::<u64>().unwrap() >= 8);
    // The Pods' reflector store holds the objects, managedFields stripped.
    let pods = h.stores.pods.state();
    assert_eq!(pods.len(), 1);
    assert!(
        pods[0]
            .metadata
            .managed_fields
            .as_ref()
            .is_none_or(|m| m.is_empty())
    );
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_modified_slice_changes_backends() {
    let mut h = Harness::start().await;
    h.api.put(
        Res::EndpointSlices,
        web_slice(&[("10.0.0.3", "a"), ("10.0.0.4", "b")]),
    );
    let ch = h.changed().await;
    assert_eq!(ch.services, keys(&["web"]));
    assert!(ch.nodes.is_empty() && ch.host_ports.is_empty());
    let s = h.summary("a");
    assert!(s.contains(&"ClusterIP 10.96.0.10:80/TCP -> 10.0.0.3:8080,10.0.0.4:8080".into()));
    assert!(s.contains(&"NodePort 192.168.0.1:30080/TCP -> 10.0.0.3:8080,10.0.0.4:8080".into()));
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_deleted_removes_service_and_pod() {
    let mut h = Harness::start().await;
    h.api.delete(Res::Services, "default", "web");
    assert_eq!(h.changed().await.services, keys(&["web"]));
    assert_eq!(
        h.summary("a"),
        [
            "ClusterIP 10.96.0.53:53/UDP -> 10.0.1.1:53",
            "HostPort 192.168.0.1:8443/TCP -> 10.0.0.9:443"
        ]
    );
    h.api.delete(Res::Pods, "default", "hp-a");
    let ch = h.changed().await;
    assert_eq!(ch.host_ports, BTreeSet::from(["a".to_string()]));
    assert_eq!(
        h.summary("a"),
        ["ClusterIP 10.96.0.53:53/UDP -> 10.0.1.1:53"]
    );
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_and_heartbeats_advance_without_changes() {
    let mut h = Harness::start().await;
    let before = h.summary("a");
    // A bookmark, then the watch ends: the watcher resumes from the bookmark's version, no relist.
    let rv = h.api.bookmark(Res::Services);
    h.api.close_watches(Res::Services);
    let want = rv.to_string();
    h.until_request("a watch resumed from the bookmark", |api| {
        api.requests().iter().any(|r| {
            r.res == Some(Res::Services) && r.watch && r.query.get("resourceVersion") == Some(&want)
        })
    })
    .await;
    assert_eq!(h.api.count(Res::Services, false), 1, "no relist");
    // A Node status heartbeat (same addresses and zone) is not a change either.
    let mut a = node("a", "192.168.0.1", "z1");
    a["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
    h.api.put(Res::Nodes, a);
    // The next change reported is this one: nothing came from the bookmark or the heartbeat.
    h.api.put(Res::Services, dns_service(5353));
    let ch = h.changed().await;
    assert_eq!(ch.services, keys(&["dns"]));
    assert!(ch.nodes.is_empty());
    let after = h.summary("a");
    assert_ne!(before, after);
    assert!(after.contains(&"ClusterIP 10.96.0.53:5353/UDP -> 10.0.1.1:53".into()));
    assert!(h.errors.is_empty(), "{:?}", h.errors);
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_relists_and_converges() {
    let mut h = Harness::start().await;
    // While "disconnected": changes no watch sees, then the history is compacted.
    let api_port = json!({"name": "http", "port": 8080});
    let api_svc = service("api", "ClusterIP", "10.96.0.20", api_port.clone());
    h.api.delete_unseen(Res::Services, "default", "web");
    h.api.put_unseen(Res::Services, api_svc);
    h.api.delete_unseen(Res::EndpointSlices, "default", "web-1");
    let api_slice = slice("api-1", "api", api_port, &[("10.0.2.1", "a")]);
    h.api.put_unseen(Res::EndpointSlices, api_slice);
    h.api.delete_unseen(Res::Nodes, "", "b");
    for r in [Res::Services, Res::EndpointSlices, Res::Nodes] {
        h.api.expire(r);
    }
    let expected = summary(&support::cluster_of(&h.api), "a");
    assert_eq!(
        expected,
        [
            "ClusterIP 10.96.0.20:8080/TCP -> 10.0.2.1:8080",
            "ClusterIP 10.96.0.53:53/UDP -> 10.0.1.1:53",
            "HostPort 192.168.0.1:8443/TCP -> 10.0.0.9:443"
        ]
    );
    let mut all = Changes::default();
    let converge = async {
        loop {
            match h.next().await {
                SourceEvent::Changed(c) => all.merge(c),
                e => panic!("unexpected {e:?}"),
            }
            let c = h.cluster.read().unwrap();
            if summary(&c, "a") == expected && c.node("b").is_none() {
                break;
            }
        }
    };
    timeout(WAIT, converge).await.expect("converged");
    // Only what changed is reported: dns (listed again, same version) is not.
    assert_eq!(all.services, keys(&["api", "web"]));
    assert_eq!(all.nodes, BTreeSet::from(["b".to_string()]));
    assert!(all.host_ports.is_empty());
    // The 410 was seen, and each expired resource was listed a second time; Pods were not.
    assert!(
        h.errors
            .iter()
            .any(|e| e.contains("410") || e.contains("too old")),
        "{:?}",
        h.errors
    );
    for r in [Res::Services, Res::EndpointSlices, Res::Nodes] {
        h.until_request("the relist", |api| api.count(r, false) == 2)
            .await;
    }
    assert_eq!(h.api.count(Res::Pods, false), 1);
    let names: BTreeSet<String> = h
        .cluster
        .read()
        .unwrap()
        .service_keys()
        .map(|k| k.name.to_string())
        .collect();
    assert_eq!(names, BTreeSet::from(["api".into(), "dns".into()]));
    // And the source keeps watching after the relist.
    h.api.put(Res::Services, dns_service(5353));
    assert_eq!(h.changed().await.services, keys(&["dns"]));
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_kubeconfig_is_an_error() {
    let flags = KubeFlags {
        kubeconfig: Some("/nonexistent/oxilium/kubeconfig".into()),
        ..Default::default()
    };
    let e = flags.client().await.err().expect("an error");
    assert!(
        e.to_string().contains("/nonexistent/oxilium/kubeconfig"),
        "{e}"
    );
}
