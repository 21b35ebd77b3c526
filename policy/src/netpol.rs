//! Translation of Kubernetes NetworkPolicy into normalized [`Rule`]s.
use crate::api::Protocol;
use crate::api::cilium::PortProtocol;
use crate::api::k8s::{self, NetworkPolicy, PolicyType};
use crate::labels::{Source, keys};
use crate::rule::{Action, Direction, Filter, PolicyKind, PolicyRef, PortSpec, Rule};
use crate::selector::{Op, Requirement, Selector};
use crate::translate::{FieldError, cidr_selector, err, ns_req, ports, selector};

fn k8s_ports(list: &Option<Vec<k8s::Port>>, path: &str) -> Result<Vec<PortSpec>, FieldError> {
    let conv: Vec<PortProtocol> = list
        .iter()
        .flatten()
        .map(|p| PortProtocol {
            port: p.port.clone(),
            end_port: p.end_port,
            protocol: Some(p.protocol.unwrap_or(Protocol::Tcp)),
        })
        .collect();
    ports(&conv, path, Protocol::Tcp, false)
}

fn k8s_peers(
    list: &Option<Vec<k8s::Peer>>,
    path: &str,
    ns: &str,
    rule: &mut Rule,
) -> Result<Vec<Selector>, FieldError> {
    let list = match list {
        None => return Ok(vec![Selector::wildcard()]),
        Some(l) if l.is_empty() => return Ok(vec![Selector::wildcard()]),
        Some(l) => l,
    };
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let pp = format!("{path}[{i}]");
        match (&p.pod_selector, &p.namespace_selector, &p.ip_block) {
            (None, None, None) => {
                return err(pp, "a peer needs podSelector, namespaceSelector or ipBlock");
            }
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                return err(
                    format!("{pp}.ipBlock"),
                    "ipBlock cannot be combined with a selector",
                );
            }
            (None, None, Some(b)) => out.push(cidr_selector(
                &b.cidr,
                &b.except,
                &format!("{pp}.ipBlock"),
                &mut rule.cidrs,
            )?),
            (pod, nsel, None) => {
                let mut sel = match pod {
                    Some(ps) => selector(ps, Source::K8s),
                    None => Selector::wildcard(),
                };
                match nsel {
                    None => sel = sel.and(ns_req(ns)),
                    Some(nsel) => {
                        // Namespace labels appear on pod identities under a prefix.
                        let Selector::Labels(reqs) = selector(nsel, Source::K8s) else {
                            unreachable!()
                        };
                        for mut r in reqs {
                            r.key = format!("{}{}", keys::NAMESPACE_LABELS, r.key);
                            sel = sel.and(r);
                        }
                        sel = sel.and(Requirement {
                            source: Source::K8s,
                            key: keys::NAMESPACE.into(),
                            op: Op::Exists,
                        });
                    }
                }
                out.push(sel);
            }
        }
    }
    Ok(out)
}

/// Translates a Kubernetes NetworkPolicy.
pub fn network_policy(p: &NetworkPolicy) -> Result<(PolicyRef, Vec<Rule>), FieldError> {
    let ns = p
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let origin = PolicyRef {
        kind: PolicyKind::NetworkPolicy,
        namespace: Some(ns.clone()),
        name: p.metadata.name.clone(),
    };
    let subject = selector(&p.spec.pod_selector, Source::K8s).and(ns_req(&ns));
    let mut rule = Rule::new(&origin, subject);
    // As the API server defaults it: absent or empty policyTypes = Ingress, plus Egress when the
    // policy has egress rules (an empty `egress: []` does not count).
    let types = match &p.spec.policy_types {
        Some(t) if !t.is_empty() => t.clone(),
        _ if p.spec.egress.as_ref().is_some_and(|e| !e.is_empty()) => {
            vec![PolicyType::Ingress, PolicyType::Egress]
        }
        _ => vec![PolicyType::Ingress],
    };
    rule.enforces = [
        types.contains(&PolicyType::Ingress),
        types.contains(&PolicyType::Egress),
    ];
    if rule.enforces[0] {
        for (i, r) in p.spec.ingress.iter().flatten().enumerate() {
            let path = format!("spec.ingress[{i}]");
            let peers = k8s_peers(&r.from, &format!("{path}.from"), &ns, &mut rule)?;
            let ports = k8s_ports(&r.ports, &format!("{path}.ports"))?;
            rule.filters.push(Filter {
                direction: Direction::Ingress,
                peers,
                ports,
                action: Action::Allow,
            });
        }
    }
    if rule.enforces[1] {
        for (i, r) in p.spec.egress.iter().flatten().enumerate() {
            let path = format!("spec.egress[{i}]");
            let peers = k8s_peers(&r.to, &format!("{path}.to"), &ns, &mut rule)?;
            let ports = k8s_ports(&r.ports, &format!("{path}.ports"))?;
            rule.filters.push(Filter {
                direction: Direction::Egress,
                peers,
                ports,
                action: Action::Allow,
            });
        }
    }
    Ok((origin, vec![rule]))
}
