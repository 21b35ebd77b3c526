//! Chaining (generic-veth): `oxilium-cni` after another plugin (e.g. `ptp` or `bridge` with
//! `host-local`) that made the pod's veth and addresses. ADD with a `prevResult` takes the pod
//! interface's addresses from it, finds the host end of the veth through the pod interface's peer
//! ifindex (IFLA_LINK, read inside the pod's namespace), attaches the endpoint programs there and
//! registers the endpoint in `OXI_ENDPOINTS` (service translation, local delivery) and with the
//! policy agent (its policy is enforced by the same programs as a veth endpoint's). Addresses,
//! routes and the veth stay the first plugin's: nothing of them is changed, and DEL removes only
//! the programs, the map entries and the record.
use super::{CniAgent, Endpoint, Request, failed, veth};
use cni::{CniError, CniResult, code};
use std::{net::IpAddr, path::Path};
use tracing::info;

/// The pod side as the first plugin left it.
struct PodSide {
    peer_index: u32,
    mac: [u8; 6],
}

fn pod_side(netns: &Path, ifname: &str) -> anyhow::Result<Option<PodSide>> {
    let ifname = ifname.to_string();
    let r = tokio::task::block_in_place(|| {
        net::pod::in_netns(netns, move |nl| async move {
            let Some(i) = net::links::index(&nl, &ifname).await? else {
                return Ok(None);
            };
            let Some(peer_index) = net::links::peer_index(&nl, i).await? else {
                return Ok(None);
            };
            let mac = net::links::mac(&nl, i).await?.unwrap_or_default();
            Ok(Some(PodSide { peer_index, mac }))
        })
    });
    Ok(r?)
}

impl CniAgent {
    /// ADD after another plugin: see the module's doc. Answers the previous result unchanged.
    pub(super) async fn add_chained(
        &mut self,
        req: &Request,
        prev: &serde_json::Value,
    ) -> Result<CniResult, CniError> {
        let env = &req.env;
        let result =
            CniResult::parse(prev).map_err(|m| CniError::new(code::INVALID_NETWORK_CONFIG, m))?;
        let addresses: Vec<IpAddr> = result
            .addresses_of(&env.ifname)
            .iter()
            .map(|a| a.ip())
            .collect();
        if addresses.is_empty() {
            return Err(CniError::new(
                code::INVALID_NETWORK_CONFIG,
                format!(
                    "prevResult: no address for interface {} (oxilium-cni chained needs the first plugin's addresses)",
                    env.ifname
                ),
            ));
        }
        let pod = pod_side(Path::new(&env.netns), &env.ifname)
            .map_err(|e| failed(format!("{e:#}")))?
            .ok_or_else(|| {
                failed(format!(
                    "{} in {} is not a veth (chaining needs one)",
                    env.ifname, env.netns
                ))
            })?;
        let host = net::links::name(&self.nl, pod.peer_index)
            .await
            .map_err(failed)?
            .ok_or_else(|| {
                failed(format!(
                    "the peer of {} (ifindex {}) is not in the agent's namespace",
                    env.ifname, pod.peer_index
                ))
            })?;
        let host_mac = net::links::mac(&self.nl, pod.peer_index)
            .await
            .map_err(failed)?
            .unwrap_or_default();
        let (pod_name, labels) = self.pod_labels(env);
        let att = env.attachment();
        let ep = Endpoint {
            id: self
                .ipam
                .get(&att)
                .map(|e| e.data.id)
                .unwrap_or_else(|| self.next_id()),
            netns: env.netns.clone(),
            host_ifname: host.clone(),
            host_ifindex: pod.peer_index,
            host_mac: veth::mac_string(&host_mac),
            pod_mac: veth::mac_string(&pod.mac),
            pod: pod_name,
            labels,
            mtu: None,
            chained: true,
        };
        let done = (|| -> anyhow::Result<()> {
            self.progs.attach(&host, pod.peer_index)?;
            self.write_map(&addresses, &ep)?;
            // Enforced like any endpoint: the programs on the host end check its policy.
            self.policy.endpoint_up(
                ep.id,
                ep.pod.as_deref(),
                &env.container_id,
                &ep.labels,
                &addresses,
            )?;
            self.ipam.record(&att, addresses.clone(), ep.clone())?;
            Ok(())
        })();
        if let Err(e) = done {
            self.teardown(&addresses, &ep).await;
            let _ = self.ipam.release(&att);
            return Err(failed(format!("{e:#}")));
        }
        info!(container = %env.container_id, ifname = %env.ifname, ?addresses, device = %host, "chained endpoint added");
        Ok(result)
    }
}
