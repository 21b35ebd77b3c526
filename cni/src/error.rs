//! CNI error objects: what the plugin prints on stdout (with a non-zero exit) when a command fails.
use serde::{Deserialize, Serialize};

/// Error codes: the spec's (1-99) and oxilium's own (100 and up, as the spec reserves them for
/// plugins).
pub mod code {
    /// The configuration's `cniVersion` is not one the plugin supports.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A configuration field the plugin cannot honour.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container is unknown or does not exist (CHECK).
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// The network configuration is invalid (a field missing or of the wrong type or value).
    pub const INVALID_NETWORK_CONFIG: u32 = 4;
    /// Reading or writing a file failed.
    pub const IO: u32 = 5;
    /// The configuration could not be decoded (not JSON).
    pub const DECODE: u32 = 6;
    /// An environment variable is missing or invalid.
    pub const INVALID_ENV: u32 = 7;
    /// Transient: the node agent is not answering; try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot set up containers now (the agent is down or not ready).
    pub const NOT_AVAILABLE: u32 = 50;
    /// oxilium: the node's pod address pool has no free address.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// oxilium: the agent failed the request (the message says why).
    pub const AGENT_FAILED: u32 = 101;
}

/// An error object as the spec defines it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            cni_version: crate::LATEST.into(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn details(mut self, d: impl Into<String>) -> CniError {
        self.details = d.into();
        self
    }

    /// The error as answered in `version` (the configuration's, when it was read).
    pub fn in_version(mut self, version: &str) -> CniError {
        self.cni_version = version.into();
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain strings and numbers")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_serialize_as_the_spec_says() {
        let e = CniError::new(code::TRY_AGAIN_LATER, "agent down").in_version("0.4.0");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["code"], 11);
        assert_eq!(v["msg"], "agent down");
        assert!(v.get("details").is_none());
        let back: CniError = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }
}
