//! What a runtime hands the plugin: the network configuration on stdin ([`NetConf`]) and the
//! `CNI_*` environment variables ([`Env`]). Both are checked whole before anything is done, and
//! every refusal is a [`CniError`] naming the field or variable.
use crate::error::{CniError, code};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The default API socket of the node agent (config key `agent-socket`).
pub const DEFAULT_AGENT_SOCKET: &str = "/run/oxilium/oxilium.sock";

/// One attachment: a container's interface (GC's `cni.dev/valid-attachments` entries).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The plugin's configuration (one entry of a conflist's `plugins`, with `name` and
/// `cniVersion` filled in by the runtime). Unknown keys are ignored, as the spec asks.
#[derive(Clone, Debug, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The node agent's API socket.
    #[serde(rename = "agent-socket", default)]
    pub agent_socket: Option<PathBuf>,
    /// The pod interface's MTU (both veth ends); the kernel's default (1500) without it.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The result of the plugin before this one in a chain (chaining), or what ADD returned
    /// (CHECK, DEL).
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<serde_json::Value>,
    /// GC: the attachments still in use; everything else is released.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    /// Parses stdin: not JSON → code 6; `cniVersion` missing or unsupported → codes 4 / 1; a key
    /// of the wrong type or value → code 4 naming it.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let v: serde_json::Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("the network configuration is not valid JSON: {e}"),
            )
        })?;
        let version = match v.get("cniVersion") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(_) => return Err(invalid("cniVersion: not a string")),
            None => return Err(invalid("cniVersion: missing")),
        };
        if !crate::SUPPORTED_VERSIONS.contains(&version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {version:?} is not supported (supported: {})",
                    crate::SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let c: NetConf = match serde_json::from_value(v.clone()) {
            Ok(c) => c,
            Err(e) => {
                let field = failing_field(&v)
                    .map(|f| format!("{f}: "))
                    .unwrap_or_default();
                return Err(invalid(format!("{field}{e}")).in_version(&version));
            }
        };
        if let Some(m) = c.mtu
            && !(68..=65535).contains(&m)
        {
            return Err(invalid(format!("mtu: {m} is not from 68 to 65535")).in_version(&version));
        }
        if c.agent_socket
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(invalid("agent-socket: empty path").in_version(&version));
        }
        Ok(c)
    }

    pub fn agent_socket(&self) -> PathBuf {
        self.agent_socket
            .clone()
            .unwrap_or_else(|| DEFAULT_AGENT_SOCKET.into())
    }
}

/// The first known key whose value has the wrong type (serde's message does not say which).
fn failing_field(v: &serde_json::Value) -> Option<&'static str> {
    use serde_json::from_value as f;
    let get = |k: &str| v.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let bad: [(&'static str, bool); 6] = [
        ("name", f::<String>(get("name")).is_err()),
        ("type", f::<String>(get("type")).is_err()),
        (
            "agent-socket",
            f::<Option<PathBuf>>(get("agent-socket")).is_err(),
        ),
        ("mtu", f::<Option<u32>>(get("mtu")).is_err()),
        (
            "prevResult",
            f::<Option<serde_json::Value>>(get("prevResult")).is_err(),
        ),
        (
            "cni.dev/valid-attachments",
            f::<Option<Vec<Attachment>>>(get("cni.dev/valid-attachments")).is_err(),
        ),
    ];
    bad.into_iter().find(|(_, b)| *b).map(|(k, _)| k)
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(
        code::INVALID_NETWORK_CONFIG,
        format!("invalid network configuration: {}", msg.into()),
    )
}

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// The oldest `cniVersion` a configuration may have for this command.
    pub fn since(self) -> &'static str {
        match self {
            Command::Check => "0.4.0",
            Command::Status | Command::Gc => "1.1.0",
            _ => "0.3.1",
        }
    }
}

/// The environment of one invocation, checked for its command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Env {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `K8S_POD_NAMESPACE` / `K8S_POD_NAME` from `CNI_ARGS`.
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
}

impl Env {
    /// Reads `CNI_COMMAND` and what it needs from `get` (the process environment in the
    /// plugin): ADD and CHECK need `CNI_CONTAINERID`, `CNI_NETNS` and `CNI_IFNAME`; DEL the
    /// first and last (the namespace may be gone); STATUS, GC and VERSION none.
    pub fn read(get: impl Fn(&str) -> Option<String>) -> Result<(Command, Env), CniError> {
        let cmd = get("CNI_COMMAND").ok_or_else(|| env_error("CNI_COMMAND: missing"))?;
        let cmd = Command::parse(&cmd).ok_or_else(|| {
            env_error(format!(
                "CNI_COMMAND: {cmd:?} is not ADD, DEL, CHECK, STATUS, GC or VERSION"
            ))
        })?;
        let mut env = Env::default();
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let need = |k: &str| nonempty(k).ok_or_else(|| env_error(format!("{k}: missing")));
        match cmd {
            Command::Add | Command::Check => {
                env.container_id = need("CNI_CONTAINERID")?;
                env.netns = need("CNI_NETNS")?;
                env.ifname = need("CNI_IFNAME")?;
            }
            Command::Del => {
                env.container_id = need("CNI_CONTAINERID")?;
                env.ifname = need("CNI_IFNAME")?;
                env.netns = nonempty("CNI_NETNS").unwrap_or_default();
            }
            Command::Status | Command::Gc | Command::Version => return Ok((cmd, env)),
        }
        check_container_id(&env.container_id)?;
        check_ifname(&env.ifname)?;
        if let Some(args) = nonempty("CNI_ARGS") {
            for kv in args.split(';').filter(|s| !s.is_empty()) {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| env_error(format!("CNI_ARGS: {kv:?} is not KEY=VALUE")))?;
                match k {
                    "K8S_POD_NAMESPACE" => env.pod_namespace = Some(v.into()),
                    "K8S_POD_NAME" => env.pod_name = Some(v.into()),
                    _ => {}
                }
            }
        }
        Ok((cmd, env))
    }

    pub fn attachment(&self) -> Attachment {
        Attachment {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

fn env_error(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_ENV, msg.into())
}

/// The spec's rule: alphanumerics first, then alphanumerics, `_`, `.` and `-`.
fn check_container_id(id: &str) -> Result<(), CniError> {
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    match ok {
        true => Ok(()),
        false => Err(env_error(format!(
            "CNI_CONTAINERID: {id:?} must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
        ))),
    }
}

/// A Linux interface name: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or white space.
fn check_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    match ok {
        true => Ok(()),
        false => Err(env_error(format!(
            "CNI_IFNAME: {name:?} is not a valid interface name (1-15 bytes, no '/', ':' or spaces)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<(Command, Env), CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::read(|k| m.get(k).cloned())
    }

    #[test]
    fn configs_are_checked_with_the_spec_codes() {
        let ok = br#"{"cniVersion":"1.1.0","name":"n","type":"oxilium-cni","mtu":1400,"extra":1}"#;
        let c = NetConf::parse(ok).unwrap();
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.agent_socket(), PathBuf::from(DEFAULT_AGENT_SOCKET));
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code, code::DECODE);
        let e = NetConf::parse(br#"{"cniVersion":"0.2.0","name":"n","type":"t"}"#).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert!(e.msg.contains("0.2.0"), "{}", e.msg);
        let e = NetConf::parse(br#"{"name":"n","type":"t"}"#).unwrap_err();
        assert_eq!((e.code, e.msg.contains("cniVersion")), (4, true));
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":"x"}"#)
            .unwrap_err();
        assert_eq!(e.code, code::INVALID_NETWORK_CONFIG);
        assert_eq!(e.cni_version, "1.0.0");
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":20}"#)
            .unwrap_err();
        assert!(e.msg.contains("mtu"), "{}", e.msg);
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","type":"t"}"#).unwrap_err();
        assert!(e.msg.contains("name"), "{}", e.msg);
    }

    #[test]
    fn the_environment_is_checked_per_command() {
        let base = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc-1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1",
            ),
        ];
        let (cmd, e) = env(&base).unwrap();
        assert_eq!(cmd, Command::Add);
        assert_eq!(e.pod_name.as_deref(), Some("web-1"));
        assert_eq!(e.pod_namespace.as_deref(), Some("default"));
        let without = |k: &str| -> Vec<(&str, &str)> {
            base.iter().copied().filter(|(n, _)| *n != k).collect()
        };
        let e = env(&without("CNI_NETNS")).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (7, "CNI_NETNS: missing"));
        let mut del = without("CNI_NETNS");
        del[0] = ("CNI_COMMAND", "DEL");
        assert_eq!(env(&del).unwrap().0, Command::Del);
        assert_eq!(
            env(&[("CNI_COMMAND", "VERSION")]).unwrap().0,
            Command::Version
        );
        assert_eq!(env(&[("CNI_COMMAND", "PING")]).unwrap_err().code, 7);
        assert_eq!(env(&[]).unwrap_err().code, 7);
        let mut bad = base;
        bad[3] = ("CNI_IFNAME", "a/b");
        assert!(env(&bad).unwrap_err().msg.contains("CNI_IFNAME"));
        bad[3] = ("CNI_IFNAME", "eth0");
        bad[1] = ("CNI_CONTAINERID", "-x");
        assert!(env(&bad).unwrap_err().msg.contains("CNI_CONTAINERID"));
    }
}
