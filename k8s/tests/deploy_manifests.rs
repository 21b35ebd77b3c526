//! The install manifests in deploy/kubernetes parse as the Kubernetes objects they claim to be,
//! and the DaemonSet runs the agent as a node with the RBAC's service account.
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::ServiceAccount,
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use serde_json::{Value, from_value};
use std::path::Path;

/// The objects of one file, read as the manifests folder reader reads them.
fn docs(file: &str) -> Vec<Value> {
    let path = format!("{}/../deploy/kubernetes/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    k8s::manifests::parse_text(Path::new(&path), &text)
        .unwrap()
        .into_iter()
        .map(|o| o.value)
        .collect()
}

#[test]
fn daemonset_and_rbac_are_valid_objects() {
    let rbac = docs("rbac.yaml");
    assert_eq!(rbac.len(), 3);
    let sa: ServiceAccount = from_value(rbac[0].clone()).unwrap();
    let role: ClusterRole = from_value(rbac[1].clone()).unwrap();
    let binding: ClusterRoleBinding = from_value(rbac[2].clone()).unwrap();
    let resources: Vec<String> = role
        .rules
        .unwrap()
        .iter()
        .flat_map(|r| r.resources.clone().unwrap_or_default())
        .collect();
    for r in ["services", "endpointslices", "nodes", "pods"] {
        assert!(resources.iter().any(|x| x == r), "ClusterRole lacks {r}");
    }
    assert_eq!(
        binding.subjects.unwrap()[0].name,
        sa.metadata.name.clone().unwrap()
    );

    let ds: DaemonSet = from_value(docs("daemonset.yaml")[0].clone()).unwrap();
    let pod = ds.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert_eq!(pod.host_network, Some(true));
    let c = &pod.containers[0];
    let cmd = &c.command.as_ref().unwrap()[1..];
    assert_eq!(cmd[..3], ["agent", "--role", "node"]);
    assert!(
        cmd.windows(2).any(|w| w[0] == "--metrics-address"),
        "{cmd:?}"
    );
    assert!(
        c.env
            .as_ref()
            .unwrap()
            .iter()
            .any(|e| e.name == "NODE_NAME")
    );
}
