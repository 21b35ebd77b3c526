//! `GET /explain?from=..&to=..&port=..[&proto=..&sport=..&iface=..]`: runs the packet through a
//! private instance of the role's program (crate::explain) on a blocking thread (loading and
//! verifying the program takes a moment) and answers the report.
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
    let mut v = explain::explain(hook, &pin_dir, ifindex, r, &names)?;
    v["iface"] = json!(iface);
    Ok(v)
}
