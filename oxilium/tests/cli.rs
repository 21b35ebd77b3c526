//! The `oxilium` binary's handling of bad input and its offline commands.
//! The agent case needs root only to be refused for the right reason (no kernel state is created).
use std::process::Command;

fn oxilium(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_oxilium"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn agent_refuses_an_invalid_config_before_touching_the_kernel() {
    let dir = std::env::temp_dir().join(format!("oxilium-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("lb.yaml");
    std::fs::write(
        &cfg,
        "services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    table_size: 252\n    backends:\n      - address: 10.0.1.1\n        wieght: 2\n",
    )
    .unwrap();
    let pins = dir.join("pins");
    let (ok, _, err) = oxilium(&[
        "agent",
        "--config",
        cfg.to_str().unwrap(),
        "--iface",
        "lo",
        "--pin-dir",
        pins.to_str().unwrap(),
        "--socket",
        dir.join("s.sock").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("lb.yaml:5") && err.contains("table_size"),
        "{err}"
    );
    assert!(err.contains("lb.yaml:8") && err.contains("wieght"), "{err}");
    assert!(!pins.exists(), "pin folder created for a rejected config");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn node_agent_refuses_a_snat_range_inside_the_node_port_range() {
    let dir = std::env::temp_dir().join(format!("oxilium-cli-np-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    let pins = dir.join("pins");
    let run = |range: &str| {
        oxilium(&[
            "agent",
            "--role",
            "node",
            "--node",
            "n1",
            "--manifests",
            dir.join("manifests").to_str().unwrap(),
            "--snat-port-range",
            range,
            "--node-port-range",
            "30000-32767",
            "--pin-dir",
            pins.to_str().unwrap(),
            "--socket",
            dir.join("s.sock").to_str().unwrap(),
        ])
    };
    for range in ["29000-30000", "32767-40000", "31000-31001"] {
        let (ok, _, err) = run(range);
        assert!(!ok, "{range} accepted");
        assert!(
            err.contains(&format!(
                "--snat-port-range {range} overlaps --node-port-range 30000-32767"
            )),
            "{err}"
        );
        assert!(!pins.exists(), "pin folder created for rejected flags");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn maglev_table_offline_gives_addresses_as_written() {
    let (ok, out, err) = oxilium(&[
        "maglev",
        "table",
        "--size",
        "251",
        "--backend",
        "10.0.0.1:80",
        "--backend",
        "10.0.0.2:80:3",
        "-o",
        "json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["size"], 251);
    let table = v["table"].as_array().unwrap();
    assert_eq!(table.len(), 251);
    // "10.0.0.1:80" is backend 10.0.0.1 with weight 80; "10.0.0.2:80:3" is 10.0.0.2:80 with weight 3.
    let a = table.iter().filter(|x| *x == "10.0.0.1").count();
    let b = table.iter().filter(|x| *x == "10.0.0.2:80").count();
    assert_eq!(a + b, 251);
    assert!((a as f64 - 251.0 * 80.0 / 83.0).abs() <= 1.0, "{a}");
}

#[test]
fn bad_flags_name_the_flag() {
    let (ok, _, err) = oxilium(&["maglev", "table", "--size", "250", "--backend", "a"]);
    assert!(!ok && err.contains("--size"), "{err}");
    let (ok, _, err) = oxilium(&["maglev", "table", "--backend", "10.0.0.1:0"]);
    assert!(
        !ok && err.contains("--backend") && err.contains("weight"),
        "{err}"
    );
    let (ok, _, err) = oxilium(&["maglev", "table", "--backend", "x", "--backend", "x"]);
    assert!(!ok && err.contains("--backend"), "{err}");
}

#[test]
fn policy_verdicts_for_the_star_wars_example() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policy/tests/cases/starwars-l7"
    );
    let verdict = |from: &str, http: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "policy",
            "verdict",
            "--manifests",
            dir,
            "--from",
            from,
            "--to",
            "default/deathstar",
            "--port",
            "80/TCP",
        ];
        args.extend_from_slice(http);
        args.extend(["-o", "json"]);
        let (ok, out, err) = oxilium(&args);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    assert_eq!(verdict("default/tiefighter", &[])["verdict"], "redirect");
    assert_eq!(
        verdict(
            "default/tiefighter",
            &["--http", "POST", "/v1/request-landing"]
        )["verdict"],
        "allow"
    );
    assert_eq!(
        verdict("default/tiefighter", &["--http", "PUT", "/v1/exhaust-port"])["verdict"],
        "deny"
    );
    assert_eq!(verdict("default/xwing", &[])["verdict"], "deny");
}

#[test]
fn offline_service_list_prints_what_the_node_would_program() {
    let cases = concat!(env!("CARGO_MANIFEST_DIR"), "/../k8s/tests/cases");
    let mut checked = 0;
    for case in std::fs::read_dir(cases).unwrap() {
        let case = case.unwrap().path();
        let expected = case.join("expected.json");
        if !expected.exists() {
            continue;
        }
        let dir = case.join("manifests");
        let (ok, out, err) = oxilium(&[
            "service",
            "list",
            "--manifests",
            dir.to_str().unwrap(),
            "--node",
            "node-a",
            "-o",
            "json",
        ]);
        // Non-zero exactly when some object was rejected; the rest is printed all the same.
        let nf = k8s::node_frontends(&dir, "node-a", &Default::default()).unwrap();
        let rejected = nf.notes.iter().any(|n| n.error);
        assert_eq!(ok, !rejected, "{}: {err}", case.display());
        let got: serde_json::Value = serde_json::from_str(&out).unwrap();
        let want: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&expected).unwrap()).unwrap();
        assert_eq!(got, want, "{}", case.display());
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} cases found");
    let bad = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../k8s/tests/cases/bad-syntax/manifests"
    );
    let (ok, _, err) = oxilium(&[
        "service",
        "list",
        "--manifests",
        bad,
        "--node",
        "node-a",
        "-o",
        "json",
    ]);
    assert!(!ok && err.contains("--manifests"), "{err}");
    let (ok, _, err) = oxilium(&["service", "list", "--manifests", bad, "-o", "json"]);
    assert!(!ok && err.contains("--node"), "{err}");
}

/// A typo'd field (`kubectl --validate=strict` would refuse it) rejects that object with an error
/// naming the file, the object and the field path; the rest is still listed; the exit status fails.
#[test]
fn offline_service_list_rejects_unknown_fields() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../k8s/tests/cases/unknown-field/manifests"
    );
    let (ok, out, err) = oxilium(&["service", "list", "--manifests", dir, "--node", "node-a"]);
    assert!(!ok, "{out}{err}");
    assert!(out.contains("ClusterIP 10.96.12.1:80/TCP"), "{out}");
    assert!(!out.contains("10.96.12.2"), "{out}");
    let line = err
        .lines()
        .find(|l| l.contains("Service default/typo"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.starts_with("error: "), "{line}");
    assert!(
        line.contains("unknown-field/manifests/svc.yaml:8"),
        "{line}"
    );
    assert!(line.contains("`spec.externalTraficPolicy`"), "{line}");
    assert!(line.contains("`spec.ports[0].protocl`"), "{line}");
    assert!(err.contains("EndpointSlice default/ok-2"), "{err}");
    assert!(err.contains("2 object(s) rejected"), "{err}");
}
