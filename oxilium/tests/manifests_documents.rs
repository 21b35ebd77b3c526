//! The node agent following a manifests folder written as one file of many documents: an edit of
//! one document is applied per change (only that document parsed, only its Service compiled),
//! lines moving do not make the others change, a broken document is refused whole with an error
//! naming the file, the line and the object, and documents move between files. The real agent in
//! a test-made network namespace and cgroup; nothing is sent (the programmed services are read
//! through the agent's API). Requires root; fails (never skips) when it cannot set up.
mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use support::{
    agent::AgentProcess,
    netns::{Netns, unique},
};

const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n\
    status: {addresses: [{type: InternalIP, address: 10.200.0.1}]}\n";

fn svc(i: u8) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\n\
         spec: {{clusterIP: 10.96.0.{i}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n"
    )
}

/// Service `s{i}`'s slice with the endpoints `10.1.{i}.{a}` (one per line).
fn eps(i: u8, addrs: &[u8], port: &str) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata:\n  name: s{i}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: s{i}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints:\n"
    );
    for a in addrs {
        y += &format!("- addresses: [10.1.{i}.{a}]\n");
    }
    y
}

/// One file: the Node, then each Service followed by its slice (`---` between documents).
fn one_file(slices: &[(u8, String)]) -> String {
    let mut docs = vec![NODE.to_string()];
    for (i, s) in slices {
        docs.push(svc(*i));
        docs.push(s.clone());
    }
    format!("---\n{}", docs.join("---\n"))
}

/// Backends of each ClusterIP frontend, as the agent's API lists them.
fn backends(agent: &AgentProcess) -> BTreeMap<String, Vec<String>> {
    let list = agent.cli(&["service", "list"]);
    let mut out = BTreeMap::new();
    for s in list.as_array().into_iter().flatten() {
        let Some(f) = s["frontend"].as_str() else {
            continue;
        };
        let mut b: Vec<String> = s["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["address"].as_str().map(str::to_string))
            .collect();
        b.sort();
        out.insert(f.to_string(), b);
    }
    out
}

fn want(slices: &[(u8, &[u8])]) -> BTreeMap<String, Vec<String>> {
    slices
        .iter()
        .map(|(i, addrs)| {
            let b = addrs.iter().map(|a| format!("10.1.{i}.{a}:8080")).collect();
            (format!("10.96.0.{i}:80/tcp"), b)
        })
        .collect()
}

/// The `manifests change compiled` log lines, without colours.
fn compiled(agent: &AgentProcess) -> Vec<String> {
    let log = agent.log();
    log.lines()
        .filter(|l| l.contains("manifests change compiled"))
        .map(|l| {
            let mut s = String::new();
            let mut esc = false;
            for c in l.chars() {
                match (esc, c) {
                    (false, '\x1b') => esc = true,
                    (true, 'm') => esc = false,
                    (true, _) => {}
                    (false, c) => s.push(c),
                }
            }
            s
        })
        .collect()
}

#[test]
fn one_file_of_many_documents_is_followed_per_document() {
    let ns = Netns::new(&format!("{}n", unique("md")));
    ns.run(&["ip", "addr", "add", "10.200.0.1/32", "dev", "lo"]);
    let mut agent = AgentProcess::builder(&ns, "md")
        .args(["--role", "node", "--node", "node-a", "--watch-ms", "50"])
        .file_arg("--manifests", "m")
        .cgroup()
        .build();
    let wait = Duration::from_secs(10);
    let mut slices: Vec<(u8, String)> = (1..=3).map(|i| (i, eps(i, &[1, 2], "8080"))).collect();
    agent.write_file("m/all.yaml", &one_file(&slices));
    agent.start();
    assert_eq!(
        backends(&agent),
        want(&[(1, &[1, 2]), (2, &[1, 2]), (3, &[1, 2])])
    );

    // One slice edited (a line more: every document after it moves down): that document is
    // parsed, its Service compiled, the others are left as they are.
    slices[1].1 = eps(2, &[1, 2, 3], "8080");
    agent.write_file("m/all.yaml", &one_file(&slices));
    let all3 = want(&[(1, &[1, 2]), (2, &[1, 2, 3]), (3, &[1, 2])]);
    agent.eventually(wait, "s2's new endpoint", || {
        let b = backends(&agent);
        (b == all3).then_some(()).ok_or(b)
    });
    let lines = compiled(&agent);
    let last = lines.last().expect("a change compiled");
    assert!(
        last.contains("read=1") && last.contains("services=1") && last.contains("whole=false"),
        "{lines:#?}"
    );

    // A broken document refuses the whole change: the good edit in the same write is not
    // applied either, and the error names the file, the line, the field and the object.
    let mut broken = slices.clone();
    broken[0].1 = eps(1, &[7], "8080");
    broken[2].1 = eps(3, &[1], "eighty");
    let text = one_file(&broken);
    agent.write_file("m/all.yaml", &text);
    // The line of s3's slice's `---`, and of its first line.
    let doc = text[..text.find(&broken[2].1).unwrap()]
        .matches('\n')
        .count();
    let file = agent.dir().join("m/all.yaml");
    let mut error = String::new();
    agent.eventually(wait, "the error reported", || {
        let s: Value = agent.status();
        match s["last_error"].as_str() {
            Some(e) => {
                error = e.to_string();
                Ok(())
            }
            None => Err(s),
        }
    });
    let at = format!("{}:{}: field `ports[0].port`", file.display(), doc + 1);
    assert!(error.contains(&at), "{error}");
    let object = format!("(in the document at line {doc}, EndpointSlice default/s3-1)");
    assert!(error.contains(&object), "{error}");
    assert_eq!(backends(&agent), all3);

    // Fixed, with s3's slice moved into a file of its own in the same write (taken out of one,
    // put into the other): s1's edit applies, s3 keeps its endpoints.
    let moved = eps(3, &[1, 2], "8080");
    agent.write_file("m/z.yaml", &moved);
    let rest: Vec<(u8, String)> = broken[..2].to_vec();
    let mut text = one_file(&rest);
    text += &format!("---\n{}", svc(3));
    agent.write_file("m/all.yaml", &text);
    let after = want(&[(1, &[7]), (2, &[1, 2, 3]), (3, &[1, 2])]);
    agent.eventually(wait, "the fixed folder applied", || {
        let b = backends(&agent);
        let s = agent.status();
        (b == after && s["last_error"].is_null())
            .then_some(())
            .ok_or((b, s))
    });

    // The file renamed: its objects are the same, nothing changes.
    let before = compiled(&agent).len();
    std::fs::rename(&file, agent.dir().join("m/b.yaml")).unwrap();
    agent.eventually(wait, "the rename seen", || {
        let n = compiled(&agent).len();
        (n > before).then_some(()).ok_or(n)
    });
    assert_eq!(backends(&agent), after);
    assert!(agent.status()["last_error"].is_null());
}
