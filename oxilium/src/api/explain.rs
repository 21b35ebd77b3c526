//! `GET /explain?from=..&to=..&port=..[&proto=..&sport=..&iface=..]`: runs the packet through a
//! private instance of the role's program (crate::explain) on a blocking thread (loading and
//! verifying the program takes a moment) and answers the report. On a node with `--cni`, a packet
//! whose source is one of its pods (`from` its address or `namespace/name`) takes the pod path
//! (crate::explain::explain_pod); `to` may name a Service (`namespace/name`: its ClusterIP).
use crate::{
    agent::{Role, Shared},
    explain,
};
use hyper::StatusCode;
use serde_json::{Value, json};

pub async fn answer(state: Shared, query: String) -> (StatusCode, Value) {
    let r = match explain::Request::from_query(&query) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                json!({ "error": format!("{e:#}") }),
            );
        }
    };
    let job = tokio::task::spawn_blocking(move || run(&state, &r));
    match job.await {
        Ok(Ok(v)) => (StatusCode::OK, v),
        Ok(Err(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "error": format!("{e:#}") }),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": e.to_string() }),
        ),
    }
}

fn run(state: &Shared, r: &explain::Request) -> anyhow::Result<Value> {
    if let Some(v) = pod_path(state, r)? {
        return Ok(v);
    }
    let (hook, ifaces, pin_dir) = {
        let st = state.lock().unwrap();
        let hook = match (st.role, &st.nodeport) {
            (Role::Lb, _) => explain::Hook::Xdp,
            (Role::Node, Some(_)) => explain::Hook::TcNodePort,
            _ => anyhow::bail!(
                "explain needs the edge LB or a node with --device (NodePort programs)"
            ),
        };
        let ifaces = match &st.nodeport {
            Some(np) if st.role == Role::Node => np.devices.clone(),
            _ => st.ifaces.clone(),
        };
        (hook, ifaces, st.events.pin_dir().to_path_buf())
    };
    let iface = match &r.iface {
        Some(i) if ifaces.contains(i) => i.clone(),
        Some(i) => anyhow::bail!("iface: {i:?} is not one of the agent's interfaces {ifaces:?}"),
        None => ifaces
            .first()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("iface: the agent has none"))?,
    };
    let name = std::ffi::CString::new(iface.clone())?;
    // SAFETY: a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        anyhow::bail!("iface: {iface:?} not found");
    }
    let names = crate::events::Names::from_state(state);
    let mut v = explain::explain(hook, &pin_dir, ifindex, &r.packet()?, &names)?;
    v["iface"] = json!(iface);
    Ok(v)
}

/// The pod path, when the source is a pod of this node; None otherwise.
fn pod_path(state: &Shared, r: &explain::Request) -> anyhow::Result<Option<Value>> {
    use anyhow::bail;
    use std::net::IpAddr;
    let (cni, pin_dir) = {
        let st = state.lock().unwrap();
        (st.cni.clone(), st.events.pin_dir().to_path_buf())
    };
    let from_ip = r.from.parse::<IpAddr>().ok();
    let Some(cni) = cni else {
        if from_ip.is_none() {
            bail!("from: {:?}: pods are named on a node with --cni", r.from);
        }
        return Ok(None);
    };
    let dir = cni.blocking_lock().policy.l7.clone();
    let want_v4 = r.to.parse::<IpAddr>().map_or(true, |a| a.is_ipv4());
    let from = match from_ip {
        Some(a) if explain::local_endpoint(&pin_dir, a).is_some() => a,
        Some(_) => return Ok(None),
        None => {
            let addrs = dir.addrs_of(&r.from);
            match addrs
                .iter()
                .find(|a| a.is_ipv4() == want_v4)
                .or(addrs.first())
            {
                Some(a) => *a,
                None => bail!("from: {:?} is not a pod of this node", r.from),
            }
        }
    };
    let proto = if r.proto == "udp" {
        lb::model::Protocol::Udp
    } else {
        lb::model::Protocol::Tcp
    };
    let (to, service, candidates) = match r.to.parse::<IpAddr>() {
        Ok(a) => {
            let st = state.lock().unwrap();
            let backends: Vec<IpAddr> = st
                .model
                .services
                .iter()
                .filter(|s| {
                    s.frontend.addr == a
                        && s.frontend.port == r.port
                        && s.frontend.protocol == proto
                })
                .flat_map(|s| s.backends.iter().map(|b| b.addr.ip()))
                .collect();
            (a, None, [vec![a], backends].concat())
        }
        Err(_) => {
            let st = state.lock().unwrap();
            let named = |n: &str| {
                n == r.to
                    || n.strip_prefix(r.to.as_str()).is_some_and(|rest| {
                        rest.starts_with(|c: char| !c.is_alphanumeric() && c != '-')
                    })
            };
            let Some(s) = st.model.services.iter().find(|s| {
                named(&s.name)
                    && s.scope == lb::model::Scope::Internal
                    && s.frontend.port == r.port
                    && s.frontend.protocol == proto
                    && s.frontend.addr.is_ipv4() == from.is_ipv4()
            }) else {
                bail!(
                    "to: no Service {:?} with a ClusterIP on {}/{}",
                    r.to,
                    r.port,
                    r.proto
                );
            };
            (
                s.frontend.addr,
                Some(r.to.clone()),
                s.backends.iter().map(|b| b.addr.ip()).collect(),
            )
        }
    };
    if from.is_ipv4() != to.is_ipv4() {
        bail!("from / to: {from} and {to} are of different families");
    }
    let target = explain::PodTarget {
        packet: explain::Packet {
            from,
            to,
            port: r.port,
            proto: r.proto.clone(),
            sport: r.sport,
        },
        service,
        candidates,
        http: match r.http.as_slice() {
            [m, p] => Some((m.clone(), p.clone())),
            _ => None,
        },
    };
    let mut names = crate::events::Names::from_state(state);
    names.pods = Some(dir.clone());
    explain::explain_pod(&pin_dir, &target, &names, &dir).map(Some)
}
