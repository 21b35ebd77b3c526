//! Translation of parsed policy objects into normalized [`Rule`]s, with the semantic checks serde cannot
//! do; errors name the field path.
use crate::api::cilium::{self, CidrRule, CiliumPolicy, Entity, PortProtocol};
use crate::api::{LabelSelector, Operator, PortValue, Protocol};
use crate::cidr::Cidr;
use crate::labels::{Source, keys};
use crate::rule::{Action, Direction, Filter, L7, PolicyKind, PolicyRef, PortSel, PortSpec, Rule};
use crate::selector::{Op, Requirement, Selector};
use std::sync::Arc;

/// A semantic error at a field path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path}: {msg}")]
pub struct FieldError {
    pub path: String,
    pub msg: String,
}

pub(crate) fn err<T>(path: impl Into<String>, msg: impl Into<String>) -> Result<T, FieldError> {
    Err(FieldError {
        path: path.into(),
        msg: msg.into(),
    })
}

/// Converts a Kubernetes label selector; `source` applies to keys without a source prefix.
pub fn selector(ls: &LabelSelector, source: Source) -> Selector {
    let req = |k: &str, op: Op| {
        let (src, key) = Source::split(k);
        Requirement {
            source: src.unwrap_or(source),
            key: key.to_string(),
            op,
        }
    };
    let mut reqs: Vec<Requirement> = ls
        .match_labels
        .iter()
        .map(|(k, v)| req(k, Op::In([v.clone()].into())))
        .collect();
    for e in &ls.match_expressions {
        let vals = e.values.iter().cloned().collect();
        reqs.push(req(
            &e.key,
            match e.operator {
                Operator::In => Op::In(vals),
                Operator::NotIn => Op::NotIn(vals),
                Operator::Exists => Op::Exists,
                Operator::DoesNotExist => Op::DoesNotExist,
            },
        ));
    }
    Selector::from_requirements(reqs)
}

pub(crate) fn ns_req(ns: &str) -> Requirement {
    Requirement {
        source: Source::K8s,
        key: keys::NAMESPACE.into(),
        op: Op::In([ns.to_string()].into()),
    }
}

/// Peer selectors of a namespaced policy stay in its namespace unless they name a namespace themselves
/// or select reserved identities.
fn scope_peer(sel: Selector, ns: Option<&str>) -> Selector {
    let Some(ns) = ns else { return sel };
    if let Selector::Labels(reqs) = &sel
        && reqs.iter().any(|r| {
            r.key == keys::NAMESPACE
                || r.source == Source::Reserved
                || r.key.starts_with(keys::NAMESPACE_LABELS)
        })
    {
        return sel;
    }
    sel.and(ns_req(ns))
}

pub(crate) fn cidr_selector(
    c: &Cidr,
    except: &[Cidr],
    path: &str,
    cidrs: &mut Vec<Cidr>,
) -> Result<Selector, FieldError> {
    let mk = |c: &Cidr, op| Requirement {
        source: Source::Cidr,
        key: c.to_string(),
        op,
    };
    let mut reqs = vec![mk(c, Op::In([String::new()].into()))];
    cidrs.push(*c);
    for (i, e) in except.iter().enumerate() {
        if !c.contains(e) {
            return err(
                format!("{path}.except[{i}]"),
                format!("{e} is not inside {c}"),
            );
        }
        reqs.push(mk(e, Op::DoesNotExist));
        cidrs.push(*e);
    }
    Ok(Selector::from_requirements(reqs))
}

/// The selectors an entity stands for.
pub fn entity_selectors(e: Entity, cluster: &str) -> Vec<Selector> {
    let reserved = |k: &str| {
        Selector::from_requirements(vec![Requirement {
            source: Source::Reserved,
            key: k.into(),
            op: Op::Exists,
        }])
    };
    match e {
        Entity::All => vec![Selector::wildcard()],
        Entity::World => vec![reserved("world")],
        Entity::Host => vec![reserved("host")],
        Entity::RemoteNode => vec![reserved("remote-node")],
        Entity::KubeApiserver => vec![reserved("kube-apiserver")],
        Entity::Health => vec![reserved("health")],
        Entity::Init => vec![reserved("init")],
        Entity::Unmanaged => vec![reserved("unmanaged")],
        Entity::Cluster => {
            let mut v: Vec<Selector> = [
                "host",
                "remote-node",
                "kube-apiserver",
                "health",
                "init",
                "unmanaged",
            ]
            .iter()
            .map(|k| reserved(k))
            .collect();
            v.push(Selector::from_requirements(vec![Requirement {
                source: Source::K8s,
                key: keys::CLUSTER.into(),
                op: Op::In([cluster.to_string()].into()),
            }]));
            v
        }
    }
}

pub(crate) fn ports(
    list: &[PortProtocol],
    path: &str,
    default_proto: Protocol,
    allow_any: bool,
) -> Result<Vec<PortSpec>, FieldError> {
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let proto = p.protocol.unwrap_or(default_proto);
        if proto == Protocol::Any && !allow_any {
            return err(
                format!("{path}[{i}].protocol"),
                "ANY is not a NetworkPolicy protocol (TCP, UDP or SCTP)",
            );
        }
        let port = match (&p.port, p.end_port) {
            (None | Some(PortValue::Number(0)), None) => PortSel::All,
            (None | Some(PortValue::Number(0)), Some(_)) => {
                return err(
                    format!("{path}[{i}].endPort"),
                    "endPort needs a non-zero port",
                );
            }
            (Some(PortValue::Number(n)), None) => PortSel::Range(*n, *n),
            (Some(PortValue::Number(n)), Some(e)) => {
                if e < i64::from(*n) || e > 65535 {
                    return err(
                        format!("{path}[{i}].endPort"),
                        format!("endPort {e} must be between port {n} and 65535"),
                    );
                }
                PortSel::Range(*n, e as u16)
            }
            (Some(PortValue::Name(s)), None) => PortSel::Named(s.clone()),
            (Some(PortValue::Name(_)), Some(_)) => {
                return err(
                    format!("{path}[{i}].endPort"),
                    "endPort cannot be used with a named port",
                );
            }
        };
        out.push(PortSpec { proto, port });
    }
    Ok(out)
}

/// Peer fields of one Cilium ingress/egress rule. `None` everywhere = every peer.
struct Peers<'a> {
    endpoints: Option<&'a [LabelSelector]>,
    cidr: Option<&'a [Cidr]>,
    cidr_set: Option<&'a [CidrRule]>,
    entities: Option<&'a [Entity]>,
    fqdns: Option<&'a [cilium::FqdnSelector]>,
    prefix: &'a str, // "from" or "to"
}

/// The selectors of a rule's peer fields. A rule with no peer field selects every peer when it
/// names ports, and no peer at all when it is empty (`ingress: [{}]`: default deny, nothing
/// allowed). Peer kinds cannot be mixed in one rule (as in Cilium).
fn cilium_peers(
    p: &Peers,
    has_ports: bool,
    path: &str,
    ns: Option<&str>,
    cluster: &str,
    rule: &mut Rule,
) -> Result<Vec<Selector>, FieldError> {
    let d = p.prefix;
    let kinds: Vec<String> = [
        ("Endpoints", p.endpoints.is_some_and(|l| !l.is_empty())),
        ("CIDR", p.cidr.is_some_and(|l| !l.is_empty())),
        ("CIDRSet", p.cidr_set.is_some_and(|l| !l.is_empty())),
        ("Entities", p.entities.is_some_and(|l| !l.is_empty())),
        ("FQDNs", p.fqdns.is_some_and(|l| !l.is_empty())),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(k, _)| format!("{d}{k}"))
    .collect();
    if kinds.len() > 1 {
        return err(
            path,
            format!(
                "combining {} and {} is not supported yet",
                kinds[0], kinds[1]
            ),
        );
    }
    if p.endpoints.is_none()
        && p.cidr.is_none()
        && p.cidr_set.is_none()
        && p.entities.is_none()
        && p.fqdns.is_none()
    {
        return Ok(if has_ports {
            vec![Selector::wildcard()]
        } else {
            Vec::new()
        });
    }
    let mut out = Vec::new();
    for ls in p.endpoints.unwrap_or_default() {
        out.push(scope_peer(selector(ls, Source::Any), ns));
    }
    for c in p.cidr.unwrap_or_default() {
        out.push(cidr_selector(c, &[], "", &mut rule.cidrs)?);
    }
    for (i, c) in p.cidr_set.unwrap_or_default().iter().enumerate() {
        out.push(cidr_selector(
            &c.cidr,
            &c.except,
            &format!("{path}.{}CIDRSet[{i}]", p.prefix),
            &mut rule.cidrs,
        )?);
    }
    for e in p.entities.unwrap_or_default() {
        out.extend(entity_selectors(*e, cluster));
    }
    for f in p.fqdns.unwrap_or_default() {
        out.push(Selector::Fqdn(f.into()));
    }
    Ok(out)
}

fn l7(
    rules: &Option<cilium::L7Rules>,
    path: &str,
    dir: Direction,
) -> Result<Option<Action>, FieldError> {
    let Some(r) = rules else { return Ok(None) };
    match (&r.http, &r.dns) {
        (Some(_), Some(_)) => err(path, "http and dns rules cannot share one port rule"),
        (Some(h), None) => Ok(Some(Action::L7(Arc::new(L7::Http(h.clone()))))),
        (None, Some(_)) if dir == Direction::Ingress => {
            err(format!("{path}.dns"), "DNS rules apply to egress only")
        }
        (None, Some(d)) => Ok(Some(Action::L7(Arc::new(L7::Dns(d.clone()))))),
        (None, None) => Ok(None),
    }
}

/// Translates a CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy.
pub fn cilium_policy(
    p: &CiliumPolicy,
    cluster: &str,
) -> Result<(PolicyRef, Vec<Rule>), FieldError> {
    let clusterwide = p.kind == "CiliumClusterwideNetworkPolicy";
    let ns = if clusterwide {
        if p.metadata.namespace.is_some() {
            return err(
                "metadata.namespace",
                "a clusterwide policy has no namespace",
            );
        }
        None
    } else {
        Some(
            p.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
        )
    };
    let kind = if clusterwide {
        PolicyKind::CiliumClusterwideNetworkPolicy
    } else {
        PolicyKind::CiliumNetworkPolicy
    };
    let origin = PolicyRef {
        kind,
        namespace: ns.clone(),
        name: p.metadata.name.clone(),
    };
    let mut specs: Vec<(String, &cilium::Rule)> = Vec::new();
    if let Some(s) = &p.spec {
        specs.push(("spec".into(), s));
    }
    for (i, s) in p.specs.iter().flatten().enumerate() {
        specs.push((format!("specs[{i}]"), s));
    }
    if specs.is_empty() {
        return err("spec", "a policy needs spec or specs");
    }
    let mut out = Vec::new();
    for (path, r) in specs {
        out.push(cilium_rule(
            r,
            &path,
            &origin,
            ns.as_deref(),
            clusterwide,
            cluster,
        )?);
    }
    Ok((origin, out))
}

fn cilium_rule(
    r: &cilium::Rule,
    path: &str,
    origin: &PolicyRef,
    ns: Option<&str>,
    clusterwide: bool,
    cluster: &str,
) -> Result<Rule, FieldError> {
    let subject = match (&r.endpoint_selector, &r.node_selector) {
        (Some(_), Some(_)) => {
            return err(
                path,
                "set one of endpointSelector and nodeSelector, not both",
            );
        }
        (None, None) => {
            return err(
                format!("{path}.endpointSelector"),
                "required (or nodeSelector)",
            );
        }
        (Some(s), None) => selector(s, Source::Any),
        (None, Some(_)) if !clusterwide => {
            return err(
                format!("{path}.nodeSelector"),
                "only CiliumClusterwideNetworkPolicy may select nodes",
            );
        }
        (None, Some(s)) => selector(s, Source::Any),
    };
    let subject = match ns {
        Some(ns) => subject.and(ns_req(ns)),
        None => subject,
    };
    let mut rule = Rule::new(origin, subject);
    rule.applies_to_nodes = r.node_selector.is_some();
    let dd = r.enable_default_deny.clone().unwrap_or_default();
    // An empty list does not apply (`ingress: []`); a list with a rule does, even an empty rule.
    let some = |l: Option<usize>| l.is_some_and(|n| n > 0);
    rule.enforces = [
        dd.ingress.unwrap_or(true)
            && (some(r.ingress.as_ref().map(Vec::len))
                || some(r.ingress_deny.as_ref().map(Vec::len))),
        dd.egress.unwrap_or(true)
            && (some(r.egress.as_ref().map(Vec::len))
                || some(r.egress_deny.as_ref().map(Vec::len))),
    ];
    let dir = Direction::Ingress;
    for (i, ing) in r.ingress.iter().flatten().enumerate() {
        let p = format!("{path}.ingress[{i}]");
        let peers = Peers {
            endpoints: ing.from_endpoints.as_deref(),
            cidr: ing.from_cidr.as_deref(),
            cidr_set: ing.from_cidr_set.as_deref(),
            entities: ing.from_entities.as_deref(),
            fqdns: None,
            prefix: "from",
        };
        let peers = cilium_peers(&peers, ing.to_ports.is_some(), &p, ns, cluster, &mut rule)?;
        allow_filters(
            &mut rule,
            dir,
            peers,
            ing.to_ports.as_deref(),
            &format!("{p}.toPorts"),
        )?;
    }
    for (i, ing) in r.ingress_deny.iter().flatten().enumerate() {
        let p = format!("{path}.ingressDeny[{i}]");
        let peers = Peers {
            endpoints: ing.from_endpoints.as_deref(),
            cidr: ing.from_cidr.as_deref(),
            cidr_set: ing.from_cidr_set.as_deref(),
            entities: ing.from_entities.as_deref(),
            fqdns: None,
            prefix: "from",
        };
        let peers = cilium_peers(&peers, ing.to_ports.is_some(), &p, ns, cluster, &mut rule)?;
        deny_filters(
            &mut rule,
            dir,
            peers,
            ing.to_ports.as_deref(),
            &format!("{p}.toPorts"),
        )?;
    }
    let dir = Direction::Egress;
    for (i, eg) in r.egress.iter().flatten().enumerate() {
        let p = format!("{path}.egress[{i}]");
        let peers = Peers {
            endpoints: eg.to_endpoints.as_deref(),
            cidr: eg.to_cidr.as_deref(),
            cidr_set: eg.to_cidr_set.as_deref(),
            entities: eg.to_entities.as_deref(),
            fqdns: eg.to_fqdns.as_deref(),
            prefix: "to",
        };
        let peers = cilium_peers(&peers, eg.to_ports.is_some(), &p, ns, cluster, &mut rule)?;
        allow_filters(
            &mut rule,
            dir,
            peers,
            eg.to_ports.as_deref(),
            &format!("{p}.toPorts"),
        )?;
    }
    for (i, eg) in r.egress_deny.iter().flatten().enumerate() {
        let p = format!("{path}.egressDeny[{i}]");
        let peers = Peers {
            endpoints: eg.to_endpoints.as_deref(),
            cidr: eg.to_cidr.as_deref(),
            cidr_set: eg.to_cidr_set.as_deref(),
            entities: eg.to_entities.as_deref(),
            fqdns: None,
            prefix: "to",
        };
        let peers = cilium_peers(&peers, eg.to_ports.is_some(), &p, ns, cluster, &mut rule)?;
        deny_filters(
            &mut rule,
            dir,
            peers,
            eg.to_ports.as_deref(),
            &format!("{p}.toPorts"),
        )?;
    }
    Ok(rule)
}

fn allow_filters(
    rule: &mut Rule,
    dir: Direction,
    peers: Vec<Selector>,
    to_ports: Option<&[cilium::PortRule]>,
    path: &str,
) -> Result<(), FieldError> {
    let Some(tp) = to_ports else {
        rule.filters.push(Filter {
            direction: dir,
            peers,
            ports: Vec::new(),
            action: Action::Allow,
        });
        return Ok(());
    };
    for (i, pr) in tp.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let ports = ports(&pr.ports, &format!("{p}.ports"), Protocol::Any, true)?;
        let action = l7(&pr.rules, &format!("{p}.rules"), dir)?.unwrap_or(Action::Allow);
        rule.filters.push(Filter {
            direction: dir,
            peers: peers.clone(),
            ports,
            action,
        });
    }
    Ok(())
}

fn deny_filters(
    rule: &mut Rule,
    dir: Direction,
    peers: Vec<Selector>,
    to_ports: Option<&[cilium::PortDenyRule]>,
    path: &str,
) -> Result<(), FieldError> {
    let Some(tp) = to_ports else {
        rule.filters.push(Filter {
            direction: dir,
            peers,
            ports: Vec::new(),
            action: Action::Deny,
        });
        return Ok(());
    };
    for (i, pr) in tp.iter().enumerate() {
        let ports = ports(
            &pr.ports,
            &format!("{path}[{i}].ports"),
            Protocol::Any,
            true,
        )?;
        rule.filters.push(Filter {
            direction: dir,
            peers: peers.clone(),
            ports,
            action: Action::Deny,
        });
    }
    Ok(())
}
