//! Calling the CNI plugin exactly as a runtime does: the binary `oxilium-cni` (a symlink to the
//! binary under test, in a folder of its own that is CNI_PATH), the CNI_* environment, the
//! network configuration on stdin, the result or error object on stdout.
use super::agent::bin;
use serde_json::{Value, json};
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The plugin's folder (CNI_PATH): `oxilium-cni`, a symlink to the binary under test; removed on
/// drop.
pub struct PluginDir(pub PathBuf);

impl PluginDir {
    pub fn new(tag: &str) -> PluginDir {
        let d = std::env::temp_dir().join(format!("oxilium-cni-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::symlink(bin(), d.join("oxilium-cni")).unwrap();
        PluginDir(d)
    }

    /// CNI_PATH for a chain: this folder, then Debian's plugins.
    pub fn path_with_system(&self) -> String {
        format!("{}:/usr/lib/cni", self.0.display())
    }
}

impl Drop for PluginDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One plugin run: exit success and stdout as JSON (Null when empty).
pub struct Run {
    pub ok: bool,
    pub out: Value,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "expected an error, got {}", self.out);
        self.out["code"].as_u64().expect("a CNI error object")
    }
}

/// Runs `plugin` with `env` and `stdin` as a runtime does.
pub fn exec(plugin: &Path, env: &[(&str, &str)], stdin: &str) -> Run {
    let mut c = Command::new(plugin);
    c.env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("plugin said {text:?}: {e}"))
    };
    Run {
        ok: out.status.success(),
        out: v,
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// Runs `oxilium-cni` with `env` (CNI_PATH set to the plugin folder) and `stdin`.
pub fn cni(dir: &PluginDir, env: &[(&str, &str)], stdin: &str) -> Run {
    let path = dir.0.display().to_string();
    let mut env = env.to_vec();
    env.push(("CNI_PATH", &path));
    exec(&dir.0.join("oxilium-cni"), &env, stdin)
}

/// A single-plugin configuration for `oxilium-cni`.
pub fn conf(version: &str, socket: &Path) -> String {
    json!({"cniVersion": version, "name": "oxinet", "type": "oxilium-cni",
           "agent-socket": socket})
    .to_string()
}

/// The first IPv4 address of a result, without its prefix length.
pub fn v4(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// ADD for pod namespace `netns` as container `id` (eth0), K8S_POD_* naming `pod` in default.
#[track_caller]
pub fn add(dir: &PluginDir, conf: &str, id: &str, netns: &str, pod: &str) -> Value {
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}");
    let r = cni(
        dir,
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", &args),
        ],
        conf,
    );
    assert!(r.ok, "ADD {id}: {} {}", r.out, r.stderr);
    r.out
}

/// A conflist's plugins run as a runtime runs them, inside the node namespace `node` (where the
/// first plugin makes its host devices): ADD in order, each after the first with the previous
/// result as `prevResult`; DEL in reverse order with the final result.
pub struct Chain {
    pub version: String,
    pub name: String,
    /// The plugins' own keys (`type` first among them).
    pub plugins: Vec<Value>,
    /// CNI_PATH: the oxilium-cni folder, then /usr/lib/cni.
    pub path: String,
    pub node: String,
    /// Name each pod `default/<container id>` in CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME).
    pub pod_names: bool,
}

impl Chain {
    fn conf(&self, plugin: &Value, prev: Option<&Value>) -> String {
        let mut c = plugin.clone();
        c["cniVersion"] = self.version.clone().into();
        c["name"] = self.name.clone().into();
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c.to_string()
    }

    fn plugin_path(&self, ty: &str) -> String {
        self.path
            .split(':')
            .map(|d| format!("{d}/{ty}"))
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| panic!("plugin {ty} not found in {}", self.path))
    }

    /// Runs plugin `i` for `cmd` inside the node namespace.
    pub fn run(&self, i: usize, cmd: &str, id: &str, netns: &str, prev: Option<&Value>) -> Run {
        let p = &self.plugins[i];
        let ty = p["type"].as_str().unwrap();
        let plugin = self.plugin_path(ty);
        let node = format!("--net={}", self.node);
        let args = if self.pod_names {
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={id}")
        } else {
            "IgnoreUnknown=1".into()
        };
        let mut c = Command::new("/usr/bin/nsenter");
        c.arg(&node)
            .arg(&plugin)
            .env_clear()
            .envs([
                ("CNI_COMMAND", cmd),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", &self.path),
                ("CNI_ARGS", &args),
                ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(self.conf(p, prev).as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        Run {
            ok: out.status.success(),
            out: if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{ty} said {text:?}: {e}"))
            },
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }
    }

    /// ADD through plugins `0..upto` (all when None); the last result.
    #[track_caller]
    pub fn add(&self, id: &str, netns: &str, upto: Option<usize>) -> Value {
        let mut prev: Option<Value> = None;
        for i in 0..upto.unwrap_or(self.plugins.len()) {
            let r = self.run(i, "ADD", id, netns, prev.as_ref());
            assert!(
                r.ok,
                "ADD {id} plugin {}: {} {}",
                self.plugins[i]["type"], r.out, r.stderr
            );
            prev = Some(r.out);
        }
        prev.unwrap()
    }

    /// ADD of the plugins from `from` on, after an earlier [`Chain::add`] that stopped there.
    #[track_caller]
    pub fn add_rest(&self, id: &str, netns: &str, from: usize, prev: Value) -> Value {
        let mut prev = prev;
        for i in from..self.plugins.len() {
            let r = self.run(i, "ADD", id, netns, Some(&prev));
            assert!(r.ok, "ADD {id} plugin {i}: {} {}", r.out, r.stderr);
            prev = r.out;
        }
        prev
    }

    /// DEL of plugin `i` with the final result.
    #[track_caller]
    pub fn del(&self, i: usize, id: &str, netns: &str, result: &Value) {
        let r = self.run(i, "DEL", id, netns, Some(result));
        assert!(r.ok, "DEL {id} plugin {i}: {} {}", r.out, r.stderr);
    }
}
