//! Every live map under an agent's pin folder, as bpftool dumps it (keys and values as bytes,
//! every CPU's value of per-CPU maps), with the inner maps of map-in-maps; for tests that show
//! a command changed nothing. Ring buffers (no entries) and pins that are not maps (links) are
//! left out.
use serde_json::Value;
use std::{collections::BTreeMap, path::Path, process::Command};

fn bpftool(args: &[&str]) -> Option<Value> {
    let out = Command::new("bpftool").arg("-j").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Map name → its dump (inner maps as `OUTER[key bytes]`).
pub fn dump_all(pins: &Path) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(pins)
        .unwrap_or_else(|e| panic!("{}: {e}", pins.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for f in files {
        let path = f.to_string_lossy().into_owned();
        let Some(info) = bpftool(&["map", "show", "pinned", &path]) else {
            continue;
        };
        let kind = info["type"].as_str().unwrap_or("");
        // A ring buffer has no entries to list; socket-local storage is keyed by sockets, not
        // something bpftool can walk (its entries live and die with their sockets).
        if kind == "ringbuf" || kind == "sk_storage" {
            continue;
        }
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let dump = bpftool(&["map", "dump", "pinned", &path])
            .unwrap_or_else(|| panic!("bpftool map dump pinned {path}"));
        if kind.ends_with("of_maps") {
            for e in dump.as_array().into_iter().flatten() {
                let id = inner_id(&e["value"]);
                let inner = bpftool(&["map", "dump", "id", &id.to_string()])
                    .unwrap_or_else(|| panic!("bpftool map dump id {id} ({name})"));
                out.insert(format!("{name}[{}]", e["key"]), inner);
            }
        }
        out.insert(name, dump);
    }
    out
}

/// The inner map id of a map-in-map entry's value (bpftool prints the id, or its bytes).
fn inner_id(v: &Value) -> u64 {
    if let Some(n) = v.as_u64() {
        return n;
    }
    let bytes: Vec<u8> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| {
            b.as_str()
                .and_then(|s| u8::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        })
        .collect();
    let mut id = [0u8; 4];
    id.copy_from_slice(&bytes[..4]);
    u32::from_ne_bytes(id) as u64
}

/// The maps whose dumps differ between `a` and `b` (empty: nothing changed).
pub fn changed(a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>) -> Vec<String> {
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| a.get(*n) != b.get(*n))
        .cloned()
        .collect()
}
