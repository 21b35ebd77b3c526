//! `oxilium-cni`: the CNI plugin (the `oxilium` binary run under that file name). A thin client:
//! it checks the environment and the network configuration ([`cni::config`]), forwards the
//! command to the node agent's API socket (`agent-socket`, see
//! [`crate::agent::node::endpoints`]) and prints the result in the configuration's version, or a
//! CNI error object. With the agent down, ADD, CHECK and GC answer code 11 (try again later),
//! STATUS code 50, and DEL removes the pod's interface itself (best effort) and succeeds.
use cni::{CniError, CniResult, Command, Env, NetConf, code};
use serde_json::json;
use std::{io::Read, path::Path, process::ExitCode};

/// Whether the binary runs as the plugin (its file name is `oxilium-cni`).
pub fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| Path::new(&a).file_name().map(|f| f == "oxilium-cni"))
        .unwrap_or(false)
}

pub fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let out = match read {
        Ok(_) => run(&stdin),
        Err(e) => Err(CniError::new(code::IO, format!("reading stdin: {e}"))),
    };
    match out {
        Ok(Some(v)) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", e.to_json());
            ExitCode::FAILURE
        }
    }
}

fn run(stdin: &[u8]) -> Result<Option<serde_json::Value>, CniError> {
    let (cmd, env) = Env::read(|k| std::env::var(k).ok())?;
    if cmd == Command::Version {
        let v = serde_json::from_slice::<serde_json::Value>(stdin)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
            .unwrap_or_else(|| cni::LATEST.into());
        return Ok(Some(cni::version_info(&v)));
    }
    let conf = NetConf::parse(stdin)?;
    let v = conf.cni_version.clone();
    if !cni::version_at_least(&v, cmd.since()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "{cmd:?} needs cniVersion {} or later (have {v})",
                cmd.since()
            ),
        )
        .in_version(&v));
    }
    forward(cmd, &env, &conf).map_err(|e| e.in_version(&v))
}

fn forward(cmd: Command, env: &Env, conf: &NetConf) -> Result<Option<serde_json::Value>, CniError> {
    let path = match cmd {
        Command::Add => "/cni/add",
        Command::Del => "/cni/del",
        Command::Check => "/cni/check",
        Command::Gc => "/cni/gc",
        Command::Status => "/cni/status",
        Command::Version => unreachable!("answered above"),
    };
    let req = json!({
        "env": env,
        "mtu": conf.mtu,
        "prevResult": conf.prev_result,
        "valid": conf.valid_attachments,
    });
    let socket = conf.agent_socket();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO, format!("starting: {e}")))?;
    let answer = rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            crate::api::post(&socket, path, &req),
        )
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("no answer within 60 s")))
    });
    let (status, body) = match answer {
        Ok(a) => a,
        Err(e) => {
            let msg = format!(
                "the oxilium agent at {} is not answering: {e}",
                socket.display()
            );
            return match cmd {
                Command::Del => {
                    if !chained(env, conf) {
                        delete_interface(env);
                    }
                    Ok(None)
                }
                Command::Status => Err(CniError::new(code::NOT_AVAILABLE, msg)),
                _ => Err(CniError::new(code::TRY_AGAIN_LATER, msg)),
            };
        }
    };
    if !status.is_success() {
        return Err(
            match serde_json::from_value::<CniError>(body["cni_error"].clone()) {
                Ok(e) => e,
                Err(_) => CniError::new(
                    code::AGENT_FAILED,
                    body["error"]
                        .as_str()
                        .unwrap_or("the agent failed")
                        .to_string(),
                ),
            },
        );
    }
    match cmd {
        Command::Add if conf.prev_result.is_some() => {
            // Chained: the previous result goes on unchanged (every field of it, in the
            // configuration's version, which is the one the runtime handed it in).
            let mut prev = conf.prev_result.clone().expect("checked");
            prev["cniVersion"] = conf.cni_version.clone().into();
            Ok(Some(prev))
        }
        Command::Add => {
            let r: CniResult = serde_json::from_value(body["result"].clone()).map_err(|e| {
                CniError::new(code::AGENT_FAILED, format!("the agent's result: {e}"))
            })?;
            Ok(Some(r.to_version(&conf.cni_version)))
        }
        _ => Ok(None),
    }
}

/// Whether the attachment's interface is another plugin's (oxilium-cni chained after it): the
/// previous result names no host device of oxilium's.
fn chained(env: &Env, conf: &NetConf) -> bool {
    let Some(prev) = &conf.prev_result else {
        return false;
    };
    let ours = crate::agent::node::endpoints::veth::host_name(&env.container_id, &env.ifname);
    !prev["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|i| i["name"] == ours.as_str())
}

/// DEL with the agent down: the pod's interface is removed from its namespace (the host side
/// goes with it); a namespace or interface already gone is fine. The addresses are released by
/// the agent's GC or the next DEL.
fn delete_interface(env: &Env) {
    if env.netns.is_empty() || !Path::new(&env.netns).exists() {
        return;
    }
    let ifname = env.ifname.clone();
    let _ = net::pod::in_netns(Path::new(&env.netns), move |nl| async move {
        if let Some(i) = net::links::index(&nl, &ifname).await? {
            net::pod::delete_link(&nl, i).await?;
        }
        Ok(())
    });
}
