//! ADD's result: the interfaces made, the addresses and routes given to the pod. Kept as one
//! type and printed in the layout of the configuration's `cniVersion` ([`CniResult::to_version`]:
//! before 1.0.0 every IP carries `"version": "4"|"6"`).
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The network namespace path for the pod's interface; absent for the host side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// The interface's MTU (printed from cniVersion 1.1.0 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// The address with its prefix length (`10.1.0.5/32`).
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: serde_json::Value,
}

impl CniResult {
    /// The result as printed for `version` (one of [`crate::SUPPORTED_VERSIONS`]).
    pub fn to_version(&self, version: &str) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("plain data");
        v["cniVersion"] = version.into();
        if v["dns"].is_null() {
            v["dns"] = serde_json::json!({});
        }
        if !crate::version_at_least(version, "1.1.0")
            && let Some(ifs) = v["interfaces"].as_array_mut()
        {
            for i in ifs {
                if let Some(o) = i.as_object_mut() {
                    o.remove("mtu");
                }
            }
        }
        if !crate::version_at_least(version, "1.0.0")
            && let Some(ips) = v["ips"].as_array_mut()
        {
            for (ip, c) in ips.iter_mut().zip(&self.ips) {
                ip["version"] = if c.address.is_ipv4() { "4" } else { "6" }.into();
            }
        }
        v
    }

    /// Reads a result of any supported version (a `prevResult`); the `version` keys of the old
    /// layout are ignored. Err names what is wrong.
    pub fn parse(v: &serde_json::Value) -> Result<CniResult, String> {
        serde_json::from_value(v.clone()).map_err(|e| format!("prevResult: {e}"))
    }

    /// The addresses of the interface called `ifname` in namespace `sandbox` (or of no
    /// interface in particular, when the IP names none).
    pub fn addresses_of(&self, ifname: &str) -> Vec<IpNetwork> {
        self.ips
            .iter()
            .filter(|ip| match ip.interface {
                Some(i) => self.interfaces.get(i).is_some_and(|x| x.name == ifname),
                None => true,
            })
            .map(|ip| ip.address)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                sandbox: Some("/run/netns/p".into()),
                mtu: Some(1450),
            }],
            ips: vec![
                IpConfig {
                    address: "10.1.0.5/32".parse().unwrap(),
                    gateway: Some("169.254.1.1".parse().unwrap()),
                    interface: Some(0),
                },
                IpConfig {
                    address: "fd00:1::5/128".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("169.254.1.1".parse().unwrap()),
            }],
            dns: serde_json::Value::Null,
        }
    }

    #[test]
    fn results_follow_the_requested_version() {
        let r = sample();
        let new = r.to_version("1.1.0");
        assert_eq!(new["cniVersion"], "1.1.0");
        assert_eq!(new["ips"][0]["address"], "10.1.0.5/32");
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["dns"], serde_json::json!({}));
        assert_eq!(new["interfaces"][0]["mtu"], 1450);
        assert!(r.to_version("1.0.0")["interfaces"][0].get("mtu").is_none());
        let old = r.to_version("0.3.1");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        assert_eq!(CniResult::parse(&old).unwrap().ips, r.ips);
        assert_eq!(r.addresses_of("eth0").len(), 2);
        assert!(r.addresses_of("eth1").is_empty());
        assert!(
            CniResult::parse(&serde_json::json!({"ips": [{"address": "x"}]}))
                .unwrap_err()
                .starts_with("prevResult")
        );
    }
}
