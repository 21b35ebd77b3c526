//! Builds the eBPF objects (xdp/, tc/, sock-lb/) with ci/build-bpf and places them in OUT_DIR, from where
//! src/bpf/objects.rs embeds them into the `oxilium` binary.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    for dir in ["abi", "datapath", "xdp", "tc", "sock-lb"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("ci/build-bpf").display()
    );
    println!("cargo:rerun-if-env-changed=OXILIUM_BPF_LINKER");
    let target_dir = root.join("target/bpf");
    let status = Command::new("bash")
        .arg(root.join("ci/build-bpf"))
        .env("BPF_TARGET_DIR", &target_dir)
        .status()
        .expect("running ci/build-bpf");
    assert!(
        status.success(),
        "building the eBPF objects failed (run ci/setup first?)"
    );
    for obj in ["oxilium-xdp", "oxilium-tc", "oxilium-sock-lb"] {
        let src = target_dir.join("bpfel-unknown-none/bpf").join(obj);
        std::fs::copy(&src, out.join(format!("{obj}.o")))
            .unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
    }
}
