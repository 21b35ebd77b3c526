//! Strict parsing: unknown fields and bad values are rejected with the field path.
use policy::manifests::Manifests;

/// The objects of one YAML text, read as the manifests-folder reader reads a file.
fn load(y: &str) -> Result<Manifests, String> {
    let objects = k8s::manifests::parse_text(std::path::Path::new("test.yaml"), y)
        .map_err(|e| e.to_string())?;
    Manifests::from_objects(objects.into_iter().map(|o| (o.origin, o.value)), "default")
        .map_err(|e| e.to_string())
}

const CNP: &str =
    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: ns}\n";

fn cnp(spec: &str) -> Result<Manifests, String> {
    load(&format!("{CNP}spec: {spec}\n"))
}

#[test]
fn bad_port_names_its_path() {
    let e = cnp("{endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: '99999'}]}]}]}")
        .unwrap_err();
    assert!(
        e.contains("spec.ingress[0].toPorts[0].ports[0].port"),
        "{e}"
    );
    assert!(e.contains("out of range"), "{e}");
    // The object's file and line (the reader's origin), kind and name.
    assert!(
        e.starts_with("test.yaml:1 (CiliumNetworkPolicy p): "),
        "{e}"
    );
    let e = load(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\
                  apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIP: x}\n",
    )
    .unwrap_err();
    assert!(e.starts_with("test.yaml:5 (Pod p): status.podIP"), "{e}");
}

#[test]
fn unknown_fields_are_rejected() {
    let e = cnp("{endpointSelector: {}, ingress: [{fromEndpoint: [{}]}]}").unwrap_err();
    assert!(
        e.contains("spec.ingress[0]") && e.contains("fromEndpoint"),
        "{e}"
    );
    let e = cnp("{endpointSelector: {matchLabel: {a: b}}}").unwrap_err();
    assert!(e.contains("spec.endpointSelector"), "{e}");
    let e = load("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec: {podSelector: {}, ingres: []}\n").unwrap_err();
    assert!(e.contains("ingres"), "{e}");
}

#[test]
fn semantic_errors_name_the_field() {
    let e =
        cnp("{endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: '80', endPort: 70}]}]}]}")
            .unwrap_err();
    assert!(
        e.contains("spec.ingress[0].toPorts[0].ports[0].endPort"),
        "{e}"
    );
    let e = cnp("{endpointSelector: {}, ingress: [{fromCIDRSet: [{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}]}]}").unwrap_err();
    assert!(
        e.contains("spec.ingress[0].fromCIDRSet[0].except[0]"),
        "{e}"
    );
    let e = cnp("{endpointSelector: {}, ingress: [{fromCIDR: [10.0.0.0/40]}]}").unwrap_err();
    assert!(e.contains("spec.ingress[0].fromCIDR[0]"), "{e}");
    let e = cnp("{endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: '80'}], rules: {http: [{path: '('}]}}]}]}").unwrap_err();
    assert!(
        e.contains("spec.ingress[0].toPorts[0].rules.http[0].path"),
        "{e}"
    );
    let e = cnp("{endpointSelector: {}, ingress: [{fromEntities: [galaxy]}]}").unwrap_err();
    assert!(e.contains("spec.ingress[0].fromEntities[0]"), "{e}");
    let e = cnp("{endpointSelector: {}, egress: [{toFQDNs: [{matchName: a.com, matchPattern: '*.a.com'}]}]}").unwrap_err();
    assert!(e.contains("spec.egress[0].toFQDNs[0]"), "{e}");
    let e = cnp("{endpointSelector: {matchExpressions: [{key: a, operator: In}]}}").unwrap_err();
    assert!(
        e.contains("spec.endpointSelector.matchExpressions[0]"),
        "{e}"
    );
    let e = cnp("{nodeSelector: {}}").unwrap_err();
    assert!(e.contains("spec.nodeSelector"), "{e}");
    let e = load("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec: {podSelector: {}, ingress: [{ports: [{protocol: ANY}]}]}\n").unwrap_err();
    assert!(e.contains("spec.ingress[0].ports[0].protocol"), "{e}");
}

/// One rule may hold one kind of peer, as in Cilium (which answers "combining X and Y is not
/// supported yet").
#[test]
fn mixed_peer_kinds_are_rejected() {
    let e = cnp("{endpointSelector: {}, ingress: [{fromEndpoints: [{}], fromCIDR: [10.0.0.0/8]}]}")
        .unwrap_err();
    assert!(
        e.contains("spec.ingress[0]: combining fromEndpoints and fromCIDR is not supported yet"),
        "{e}"
    );
    let e = cnp(
        "{endpointSelector: {}, egress: [{toEntities: [world], toFQDNs: [{matchName: a.com}]}]}",
    )
    .unwrap_err();
    assert!(
        e.contains("spec.egress[0]: combining toEntities and toFQDNs"),
        "{e}"
    );
    let e = cnp("{endpointSelector: {}, ingressDeny: [{fromCIDRSet: [{cidr: 10.0.0.0/8}], fromEntities: [world]}]}")
        .unwrap_err();
    assert!(e.contains("spec.ingressDeny[0]: combining"), "{e}");
    // One kind per rule, several rules: fine.
    cnp("{endpointSelector: {}, ingress: [{fromEndpoints: [{}]}, {fromCIDR: [10.0.0.0/8]}]}")
        .unwrap();
}

/// Two objects of one kind and name in a folder: an error naming both places.
#[test]
fn duplicate_names_are_rejected_naming_both_files() {
    let obj = |ns: &str| {
        serde_json::json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "p", "namespace": ns}, "spec": {"endpointSelector": {}}})
    };
    let e = policy::manifests::Manifests::from_objects(
        [("a.yaml:1", obj("x")), ("b.yaml:7", obj("x"))],
        "default",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("duplicate CiliumNetworkPolicy x/p: defined in a.yaml:1 and in b.yaml:7"),
        "{e}"
    );
    // Same name, other namespace or kind: fine.
    policy::manifests::Manifests::from_objects(
        [("a.yaml:1", obj("x")), ("b.yaml:7", obj("y"))],
        "default",
    )
    .unwrap();
}

#[test]
fn full_cilium_language_parses() {
    let m = cnp(r#"
  endpointSelector:
    matchLabels: {app: web}
    matchExpressions:
      - {key: tier, operator: NotIn, values: [legacy]}
      - {key: k8s:env, operator: Exists}
  enableDefaultDeny: {egress: false}
  ingress:
    - fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": other}}]
    - fromCIDR: [192.0.2.0/24]
    - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]
    - fromEntities: [world, cluster, host, remote-node, kube-apiserver, health, init, unmanaged]
      toPorts:
        - ports: [{port: "8000", endPort: 8080, protocol: TCP}, {port: http, protocol: ANY}]
          rules:
            http:
              - {method: "GET|HEAD", path: "/api/.*", host: "web\\.example\\.com", headers: ["X-A: b"], headerMatches: [{name: X-C, value: d, mismatch: LOG}]}
  ingressDeny:
    - fromEntities: [world]
      toPorts: [{ports: [{port: "22", protocol: SCTP}]}]
  egress:
    - toFQDNs: [{matchName: api.github.com}, {matchPattern: "*.example.com"}]
    - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, k8s-app: kube-dns}}]
      toPorts:
        - ports: [{port: "53", protocol: UDP}]
          rules: {dns: [{matchPattern: "*"}]}
  egressDeny:
    - toCIDR: [169.254.169.254/32]
"#)
    .unwrap();
    assert_eq!(m.policies.len(), 1);
    let rule = &m.policies[0].1[0];
    assert_eq!(rule.enforces, [true, false]);
    assert!(rule.cidrs.len() >= 4);
    let ccnp = load("apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspecs:\n  - {nodeSelector: {}, ingress: [{fromEntities: [remote-node]}]}\n  - {endpointSelector: {}, egress: [{}]}\n").unwrap();
    assert_eq!(ccnp.policies[0].1.len(), 2);
    assert!(ccnp.policies[0].1[0].applies_to_nodes);
}

#[test]
fn pods_and_namespaces_are_read() {
    let m = load("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: n, labels: {a: b}, uid: x}\nspec: {serviceAccountName: sa, containers: [{name: c, image: i, ports: [{name: web, containerPort: 8080, protocol: TCP}]}]}\nstatus: {phase: Running, podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: n, labels: {t: x}}\n").unwrap();
    let spec = policy::manifests::endpoint_spec(&m.pods[0]);
    assert_eq!(spec.ips.len(), 2);
    assert_eq!(spec.service_account.as_deref(), Some("sa"));
    assert!(spec.ports.contains_key("web"));
    assert_eq!(m.namespaces.len(), 1);
    let e = load("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIP: not-an-ip}\n")
        .unwrap_err();
    assert!(e.contains("status.podIP"), "{e}");
}
