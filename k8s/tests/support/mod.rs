//! Support for the kube source tests: the fake API server (shared with lb/tests by path) and what
//! these tests read from it.
// Shared with lb/tests: each suite uses part of it.
#[allow(dead_code)]
pub mod fake_api;

use fake_api::{FakeApi, Res};

/// The server's current state as a store (what the source must converge to).
pub fn cluster_of(api: &FakeApi) -> k8s::Cluster {
    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }
    let mut c = k8s::Cluster::new();
    for o in api.objects(Res::Services) {
        c.apply_service(&from(o), None);
    }
    for o in api.objects(Res::EndpointSlices) {
        c.apply_endpoint_slice(&from(o), None);
    }
    for o in api.objects(Res::Nodes) {
        c.apply_node(&from(o));
    }
    for o in api.objects(Res::Pods) {
        c.apply_pod(&from(o), None);
    }
    c
}
