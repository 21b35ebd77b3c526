//! Text form of the agent's policy answers (`endpoint list`'s policy column, `policy get`).
use serde_json::Value;

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

fn on(v: &Value) -> &'static str {
    if v.as_bool() == Some(true) {
        "enforced"
    } else {
        "open"
    }
}

/// `enforced/open 3/1/0` for an endpoint's `policy` object.
pub fn summary(p: &Value) -> String {
    if p.is_null() {
        return "-".into();
    }
    let c = &p["counters"];
    format!(
        "{}/{}{} {}/{}/{}",
        on(&p["ingress"]),
        on(&p["egress"]),
        if p["audit"].as_bool() == Some(true) {
            " audit"
        } else {
            ""
        },
        s(&c["allowed"]),
        s(&c["denied"]),
        s(&c["audited"]),
    )
}

/// `policy get ENDPOINT`.
pub fn text(v: &Value) -> String {
    let mut out = format!(
        "endpoint {} ({}) identity {}\ningress {}, egress {}, mode {}{}\ncounters: allowed {} denied {} audited {} established {}\n",
        s(&v["id"]),
        s(&v["endpoint"]),
        s(&v["identity"]),
        on(&v["ingress"]),
        on(&v["egress"]),
        s(&v["mode"]),
        if v["audit"].as_bool() == Some(true) {
            " (audit)"
        } else {
            ""
        },
        s(&v["counters"]["allowed"]),
        s(&v["counters"]["denied"]),
        s(&v["counters"]["audited"]),
        s(&v["counters"]["established"]),
    );
    out += "DIRECTION  IDENTITY  PROTO  PORTS        VERDICT   PACKETS  PEER\n";
    for e in v["entries"].as_array().into_iter().flatten() {
        let ports = match e["ports"].as_array() {
            Some(p) if p[0] == p[1] => s(&p[0]),
            Some(p) => format!("{}-{}", s(&p[0]), s(&p[1])),
            None => "*".into(),
        };
        let peer: Vec<String> = e["peer"].as_array().into_iter().flatten().map(s).collect();
        out += &format!(
            "{:<10} {:<9} {:<6} {:<12} {:<9} {:<8} {}\n",
            s(&e["direction"]),
            s(&e["identity"]),
            if e["protocol"] == 0 {
                "*".into()
            } else {
                s(&e["protocol"])
            },
            ports,
            s(&e["verdict"]),
            s(&e["packets"]),
            peer.join(","),
        );
    }
    out
}
