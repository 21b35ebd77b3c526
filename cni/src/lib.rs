//! The CNI protocol as oxilium speaks it (spec 1.1.0 and the versions a runtime may still ask for:
//! 0.3.1, 0.4.0, 1.0.0): the network configuration and environment a runtime hands the plugin
//! ([`config`]), the result and error objects it prints ([`result`], [`error`]), and the
//! host-scope address management the node agent runs for it ([`ipam`]). No I/O beyond the IPAM
//! state file: the plugin and the agent (in the `oxilium` binary) do the rest.
//!
//! The JSON types are hand-written serde structs (the spec is small; the `cni-plugin` crates
//! pull in a runtime model of their own).
pub mod config;
pub mod error;
pub mod ipam;
pub mod result;

pub use config::{Attachment, Command, Env, NetConf};
pub use error::{CniError, code};
pub use result::CniResult;

/// Versions the plugin accepts in `cniVersion`, oldest first; VERSION lists them.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version, reported when the configuration's own cannot be read.
pub const LATEST: &str = "1.1.0";

/// Whether `v` is at least `min` (both of the form `a.b.c`).
pub fn version_at_least(v: &str, min: &str) -> bool {
    fn parts(s: &str) -> (u32, u32, u32) {
        let mut it = s.split('.').map(|p| p.parse().unwrap_or(0));
        (
            it.next().unwrap_or(0),
            it.next().unwrap_or(0),
            it.next().unwrap_or(0),
        )
    }
    parts(v) >= parts(min)
}

/// The VERSION answer.
pub fn version_info(cni_version: &str) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": cni_version,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("1.1.0", "1.0.0"));
        assert!(version_at_least("0.4.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        assert!(version_at_least("0.10.0", "0.4.0"));
        let v = version_info("1.1.0");
        assert_eq!(v["supportedVersions"][0], "0.3.1");
    }
}
