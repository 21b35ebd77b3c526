//! The cluster network's endpoints: the pods this node's CNI plugin made (`OXI_ENDPOINTS`), read
//! by the endpoint programs on the host side of every pod veth (`oxilium_endpoint_from_pod` /
//! `oxilium_endpoint_to_pod`) to deliver pod-to-pod traffic on the node straight into the
//! destination pod (bpf_redirect_peer).
use crate::lb::Addr;

pub const MAX_ENDPOINTS: u32 = 65_536;
/// Prefixes of `OXI_MASQ_EXCEPT`.
pub const MAX_MASQ_EXCEPT: u32 = 16_384;
/// `EndpointInfo::flags`: the pod's traffic leaving the cluster is masqueraded to the node's
/// address at the node's external devices.
pub const FLAG_MASQUERADE: u32 = 1;

/// Pin names, relative to the agent's pin folder.
pub mod names {
    pub const ENDPOINTS: &str = "OXI_ENDPOINTS";
    /// LPM trie: destinations never masqueraded (pod CIDRs, node addresses, exceptions).
    pub const MASQ_EXCEPT: &str = "OXI_MASQ_EXCEPT";
    pub const PINNED: [&str; 2] = [ENDPOINTS, MASQ_EXCEPT];
}

/// `OXI_ENDPOINTS` key: a pod address (IPv4-mapped for IPv4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EndpointKey {
    pub addr: Addr,
}

/// A local pod: its host-side veth and the Ethernet addresses frames to it carry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointInfo {
    /// ifindex of the host-side veth (in the node's namespace).
    pub ifindex: u32,
    /// The agent's endpoint id.
    pub id: u32,
    /// The pod's security identity (0 until the policy engine assigns them).
    pub identity: u32,
    pub flags: u32,
    /// The pod interface's MAC (destination of delivered frames).
    pub mac: [u8; 6],
    /// The host-side veth's MAC (source of delivered frames; the pods' gateway).
    pub node_mac: [u8; 6],
}

#[cfg(feature = "user")]
crate::pod!(EndpointKey, EndpointInfo);
