//! Scenario folders under tests/cases/NAME/: `manifests/` (the input), and any of
//! - `expected.json`: the exact `service_list` output for node `node-a` (or the node named in `node`);
//!   `UPDATE_EXPECTED=1 cargo test -p oxilium-k8s --test cases` rewrites it (review the diff!),
//! - `expected_error`: the listing fails and the error contains every line,
//! - `expected_notes`: every line appears in some note.
use k8s::{Options, node_frontends, output, service_list};
use std::path::{Path, PathBuf};

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

fn lines(p: &Path) -> Option<Vec<String>> {
    let t = std::fs::read_to_string(p).ok()?;
    Some(
        t.lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect(),
    )
}

fn run_case(dir: &Path) -> Result<(), String> {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let node = std::fs::read_to_string(dir.join("node"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "node-a".into());
    let manifests = dir.join("manifests");
    let opts = Options::default();
    if let Some(want) = lines(&dir.join("expected_error")) {
        let err = match service_list(&manifests, &node, &opts) {
            Ok(v) => return Err(format!("{name}: expected an error, got {v}")),
            Err(e) => e.to_string(),
        };
        for w in want {
            if !err.contains(&w) {
                return Err(format!("{name}: error {err:?} lacks {w:?}"));
            }
        }
        return Ok(());
    }
    let nf = node_frontends(&manifests, &node, &opts).map_err(|e| format!("{name}: {e}"))?;
    let got = output::frontends_json(&nf.frontends);
    if let Some(want) = lines(&dir.join("expected_notes")) {
        let notes: Vec<String> = nf.notes.iter().map(|n| n.to_string()).collect();
        for w in want {
            if !notes.iter().any(|n| n.contains(&w)) {
                return Err(format!("{name}: no note contains {w:?}; notes: {notes:#?}"));
            }
        }
    }
    let path = dir.join("expected.json");
    let pretty = serde_json::to_string_pretty(&got).unwrap() + "\n";
    if std::env::var_os("UPDATE_EXPECTED").is_some() {
        std::fs::write(&path, &pretty).unwrap();
        return Ok(());
    }
    match std::fs::read_to_string(&path) {
        Ok(want) => {
            let want: serde_json::Value =
                serde_json::from_str(&want).map_err(|e| format!("{name}: expected.json: {e}"))?;
            if want != got {
                return Err(format!("{name}: service list differs; got:\n{pretty}"));
            }
            Ok(())
        }
        Err(_) => Err(format!("{name}: no expected.json; got:\n{pretty}")),
    }
}

#[test]
fn scenario_folders() {
    let failures: Vec<String> = cases().iter().filter_map(|d| run_case(d).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
