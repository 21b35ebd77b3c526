//! Truth tables: each folder under tests/cases holds manifests and `expect.txt` lines
//! `FROM TO PORT/PROTO [METHOD PATH] => VERDICT [POLICY]`, plus an optional `options:` line
//! (`audit`, `enforcement=always|never`, `allow-localhost=policy`).
use policy::offline::{self, Offline, Query};
use policy::{Config, Enforcement};
use std::path::Path;

fn run_case(dir: &Path) -> usize {
    let expect = std::fs::read_to_string(dir.join("expect.txt")).unwrap();
    let mut cfg = Config::default();
    let mut checked = 0;
    let lines: Vec<&str> = expect
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    for l in &lines {
        if let Some(opts) = l.strip_prefix("options:") {
            for o in opts.split_whitespace() {
                match o {
                    "audit" => cfg.audit = true,
                    "enforcement=always" => cfg.enforcement = Enforcement::Always,
                    "enforcement=never" => cfg.enforcement = Enforcement::Never,
                    "allow-localhost=policy" => cfg.allow_localhost = false,
                    _ => panic!("unknown option {o}"),
                }
            }
        }
    }
    let objects = k8s::manifests::read_folder(dir).unwrap_or_else(|e| panic!("{e}"));
    let off = Offline::from_objects(objects.into_iter().map(|o| (o.origin, o.value)), cfg)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for l in lines.iter().filter(|l| !l.starts_with("options:")) {
        let (q, want) = l.split_once("=>").unwrap();
        let q: Vec<&str> = q.split_whitespace().collect();
        let want: Vec<&str> = want.split_whitespace().collect();
        let (port, proto) = offline::parse_port("--port", q[2]).unwrap();
        let http = (q.len() == 5).then(|| policy::l7::HttpRequest {
            method: q[3].into(),
            path: q[4].into(),
            ..Default::default()
        });
        let query = Query {
            from: q[0].into(),
            to: offline::parse_target("--to", q[1]).unwrap(),
            port,
            proto,
            http,
        };
        let got = off.verdict(&query).unwrap();
        assert_eq!(got["verdict"], want[0], "{}: {l}\n{got:#}", dir.display());
        if let Some(p) = want.get(1) {
            let all: Vec<String> = got["policies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            assert!(
                all.iter().any(|x| x == p),
                "{}: {l}: deciding policies {all:?}\n{got:#}",
                dir.display()
            );
        }
        checked += 1;
    }
    checked
}

#[test]
fn truth_tables() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    let mut total = 0;
    for d in &dirs {
        total += run_case(d);
    }
    assert!(
        dirs.len() >= 15 && total >= 70,
        "{} cases, {total} checks",
        dirs.len()
    );
}
