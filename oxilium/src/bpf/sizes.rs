//! Every map's size (`max_entries`), decided once from what the agent runs and its settings
//! before anything is loaded, and given to every object load (the objects share their pinned
//! maps, so they must agree; see [`super::loader`]). A map the role never uses keeps the one
//! entry the kernel needs for the programs that name it to load. docs/architecture.md lists the
//! maps, docs/config.md the settings and docs/benchmarks.md ("BPF map memory") what they cost.
use anyhow::{Result, bail};
use std::collections::BTreeMap;

/// The size of a map the role never uses.
pub const UNUSED: u32 = 1;

/// Accepted `--max-endpoints` (local pods: one endpoint entry per address).
pub const MAX_ENDPOINTS_RANGE: std::ops::RangeInclusive<u32> = 1..=1_048_576;
/// Default `--max-endpoints`: the maps' compiled size.
pub const DEFAULT_MAX_ENDPOINTS: u32 = abi::endpoint::MAX_ENDPOINTS;

/// Accepted `--events-max-flows`, `--policy-ct-max-entries`, `--sock-revnat-max-entries`: the
/// LRU maps' range, as `--ct-max-entries`.
pub const LRU_ENTRIES_RANGE: std::ops::RangeInclusive<u32> = lb::config::MAP_ENTRIES_RANGE;
/// Default `--policy-ct-max-entries`: the flows of the node's pods under a policy (an entry per
/// flow and pod; an evicted flow is only checked against the policy again).
pub const DEFAULT_POLICY_CT_ENTRIES: u32 = 65_536;
/// Default `--sock-revnat-max-entries`: an unconnected UDP socket's (socket, backend) pairs,
/// needed until the replies are in (musl's resolver opens a socket per query: at 1,000 a
/// second, the last minute); connected sockets keep theirs in socket storage.
pub const DEFAULT_SOCK_REVNAT_ENTRIES: u32 = 65_536;
/// Bytes of one event in the ring: the record and the ring's 8-byte header, 8-byte aligned.
pub const EVENT_RECORD_BYTES: u32 = (size_of::<abi::event::Event>() as u32 + 8).next_multiple_of(8);

/// Default `--events-max-flows`: as many flows as a ring of `ring_bytes` holds events (more
/// flows writing at once fill the ring anyway), within [`LRU_ENTRIES_RANGE`].
pub fn default_event_flows(ring_bytes: u32) -> u32 {
    (ring_bytes / EVENT_RECORD_BYTES).clamp(*LRU_ENTRIES_RANGE.start(), *LRU_ENTRIES_RANGE.end())
}

/// The event ring's size in bytes and the rate limiter's flows (`--events-ring-bytes`,
/// `--events-max-flows`: flags of every role).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Events {
    pub ring_bytes: u32,
    pub flows: u32,
}

/// The programs the agent runs, hence the maps it uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Uses {
    /// Service translation per packet (the edge LB's XDP program, NodePort tc / XDP, the pod
    /// programs): conntrack, SNAT, per-service and per-backend counters.
    pub packet_lb: bool,
    /// The socket LB (cgroup programs): reverse translation and session affinity per socket.
    pub socket_lb: bool,
    /// NodePort programs on `--device`: local endpoints and source ranges.
    pub nodeport: bool,
    /// The cluster network (`--cni`): endpoints, masquerade exceptions, policy, ipcache.
    pub cni: bool,
    /// `--bandwidth-manager`: the pods' rate limits.
    pub bandwidth: bool,
    /// An XDP program (edge LB, NodePort acceleration): its next-hop cache.
    pub xdp: bool,
    /// Programs that write events per packet (every one but the socket LB's): the per-flow rate
    /// limiter.
    pub packet_events: bool,
}

/// The sizing settings, each with the name it has for the user (flag or lb.yaml field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub services: u32,
    pub backends: u32,
    pub endpoints: u32,
    pub conntrack: u32,
    pub snat: u32,
    /// `--policy-ct-max-entries` (the node's, with `--cni`).
    pub policy_ct: u32,
    /// `--sock-revnat-max-entries` (the node's socket LB).
    pub sock_revnat: u32,
    pub events: Events,
    /// How the settings are named: (services, backends, endpoints).
    pub names: (&'static str, &'static str, &'static str),
}

/// Every map's size for one agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapSizes {
    sizes: BTreeMap<&'static str, u32>,
    settings: Settings,
}

impl MapSizes {
    /// The sizes for an agent that runs `uses` with `s`.
    pub fn new(uses: Uses, s: Settings) -> MapSizes {
        let on = |used: bool, n: u32| if used { n } else { UNUSED };
        // Ids start at 1: arrays indexed by id have one entry more than the ids given out.
        let (services, backends) = (s.services + 1, s.backends + 1);
        let flows = uses.packet_lb;
        let mut m = BTreeMap::new();
        // One entry per service, and one marker per VIP (at most one per service).
        m.insert(abi::lb::names::SERVICES, s.services.saturating_mul(2));
        m.insert(abi::lb::names::TABLES, services);
        // The edge XDP program's services by id (its established path); NodePort acceleration
        // looks its frontends up by address and leaves it empty.
        m.insert(
            abi::lb::names::SERVICE_IDS,
            on(uses.xdp && !uses.nodeport, services),
        );
        m.insert(abi::lb::names::BACKENDS, backends);
        m.insert(abi::lb::names::SERVICE_STATS, on(flows, services));
        m.insert(abi::lb::names::BACKEND_STATS, on(flows, backends));
        m.insert(abi::lb::names::CONNTRACK, on(flows, s.conntrack));
        m.insert(abi::lb::names::SNAT, on(flows, s.snat));
        // The XDP program's next-hop cache: a slot per backend id, at most its compiled size.
        m.insert(
            "OXI_NEXTHOP",
            on(uses.xdp, backends.min(abi::lb::NEXTHOP_SLOTS)),
        );
        // The socket LB's reverse translation of unconnected UDP (connected sockets keep theirs
        // in socket storage or the ring below); its affinity entries (client, service) half as
        // many as conntrack. The pod programs and NodePort read affinity too.
        let affinity = uses.socket_lb || flows;
        m.insert(abi::sock::names::REVNAT, on(uses.socket_lb, s.sock_revnat));
        // The TCP connects' slots: the program masks the cookie with the compiled size.
        m.insert(
            abi::sock::names::REVNAT_RING,
            on(uses.socket_lb, abi::sock::SOCK_REVNAT_RING),
        );
        m.insert(
            abi::sock::names::AFFINITY,
            on(affinity, (s.conntrack / 2).max(1)),
        );
        m.insert(abi::sock::names::AFFINITY_TIMEOUT, on(affinity, services));
        m.insert(
            abi::nodeport::names::ENDPOINTS,
            on(uses.nodeport, s.endpoints),
        );
        m.insert(
            abi::nodeport::names::SOURCE_RANGES,
            on(uses.nodeport, abi::nodeport::MAX_SOURCE_RANGES),
        );
        m.insert(abi::endpoint::names::ENDPOINTS, on(uses.cni, s.endpoints));
        m.insert(
            abi::endpoint::names::MASQ_EXCEPT,
            on(uses.cni, abi::endpoint::MAX_MASQ_EXCEPT),
        );
        m.insert(abi::policy::names::POLICY, on(uses.cni, s.endpoints));
        m.insert(abi::policy::names::POLICY_STATS, on(uses.cni, s.endpoints));
        m.insert(
            abi::policy::names::IPCACHE,
            on(uses.cni, abi::policy::MAX_IPCACHE),
        );
        m.insert(abi::policy::names::POLICY_CT, on(uses.cni, s.policy_ct));
        // Two entries per pod veth: egress and ingress.
        m.insert(
            abi::bandwidth::names::BANDWIDTH,
            on(uses.bandwidth, s.endpoints.saturating_mul(2)),
        );
        m.insert(abi::event::names::EVENTS, s.events.ring_bytes);
        m.insert(
            abi::event::names::LIMIT,
            on(uses.packet_events, s.events.flows),
        );
        MapSizes {
            sizes: m,
            settings: s,
        }
    }

    /// The edge LB's sizes: lb.yaml's `max_services`, `max_backends`, `conntrack.max_entries`
    /// and `snat.max_entries`, the `--events-*` flags; the XDP program's maps only.
    pub fn edge(c: &lb::config::Config, events: Events) -> MapSizes {
        let settings = Settings {
            services: c.max_services,
            backends: c.max_backends,
            endpoints: UNUSED,
            conntrack: c.conntrack.max_entries,
            snat: c.snat.max_entries,
            policy_ct: UNUSED,
            sock_revnat: UNUSED,
            events,
            names: ("max_services", "max_backends", "max_endpoints"),
        };
        let uses = Uses {
            packet_lb: true,
            xdp: true,
            packet_events: true,
            ..Default::default()
        };
        MapSizes::new(uses, settings)
    }

    /// A DSR backend's sizes: it runs the decapsulation only (whose drops are events), every
    /// service map keeps one entry.
    pub fn dsr_backend(events: Events) -> MapSizes {
        let settings = Settings {
            services: UNUSED,
            backends: UNUSED,
            endpoints: UNUSED,
            conntrack: UNUSED,
            snat: UNUSED,
            policy_ct: UNUSED,
            sock_revnat: UNUSED,
            events,
            names: ("max_services", "max_backends", "max_endpoints"),
        };
        let uses = Uses {
            packet_events: true,
            ..Default::default()
        };
        MapSizes::new(uses, settings)
    }

    /// The size of `name`; None: its compiled size.
    pub fn get(&self, name: &str) -> Option<u32> {
        self.sizes.get(name).copied()
    }

    /// Every sized map.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u32)> + '_ {
        self.sizes.iter().map(|(k, v)| (*k, *v))
    }

    /// The reconciler's limits for maps of these sizes whose actual sizes are `tables` and
    /// `backends_len` (`OXI_TABLES`, `OXI_BACKENDS`: the pinned maps may be of an earlier size,
    /// see [`super::loader`]): the smaller of the setting and what the maps hold.
    pub fn limits(&self, tables: u32, backends_len: u32) -> lb::reconcile::Limits {
        const PINNED: &str = "the pinned maps (sized by an earlier start; `--cleanup` resizes)";
        let s = &self.settings;
        let (services, backends) = (tables.saturating_sub(1), backends_len.saturating_sub(1));
        lb::reconcile::Limits {
            services: s.services.min(services),
            backends: s.backends.min(backends),
            services_setting: if services < s.services {
                PINNED
            } else {
                s.names.0
            },
            backends_setting: if backends < s.backends {
                PINNED
            } else {
                s.names.1
            },
        }
    }

    /// `--max-endpoints` (or its name in this role) and its value, for a full map's error.
    pub fn endpoints(&self) -> (&'static str, u32) {
        (self.settings.names.2, self.settings.endpoints)
    }
}

/// Checks a size setting: `range`, named `what` in the error.
pub fn check(what: &str, v: u32, range: std::ops::RangeInclusive<u32>) -> Result<u32> {
    if !range.contains(&v) {
        bail!(
            "{what}: must be {}..={}, got {v}",
            range.start(),
            range.end()
        );
    }
    Ok(v)
}

static SIZES: std::sync::OnceLock<MapSizes> = std::sync::OnceLock::new();

/// Sets the sizes for every object loaded from now on (once, before the first load).
pub fn set(sizes: MapSizes) {
    let _ = SIZES.set(sizes);
}

/// The sizes set by the agent; None in a process that never set them (the compiled sizes).
pub fn current() -> Option<&'static MapSizes> {
    SIZES.get()
}

/// An error for a map update refused because the map is full (E2BIG), naming the setting.
pub fn full_error(map: &str, e: aya::maps::MapError) -> anyhow::Error {
    full_error_of(map, e, current())
}

fn full_error_of(map: &str, e: aya::maps::MapError, sizes: Option<&MapSizes>) -> anyhow::Error {
    let full = matches!(&e, aya::maps::MapError::SyscallError(s)
        if s.io_error.raw_os_error() == Some(libc::E2BIG));
    match (full, sizes) {
        (true, Some(s)) => {
            let (name, n) = s.endpoints();
            anyhow::anyhow!("{map} is full: {name} is {n}")
        }
        _ => anyhow::Error::new(e).context(format!("writing {map}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            services: 100,
            backends: 1000,
            endpoints: 50,
            conntrack: 4096,
            snat: 2048,
            policy_ct: 8192,
            sock_revnat: 1024,
            events: Events {
                ring_bytes: 1 << 16,
                flows: 3000,
            },
            names: ("--max-services", "--max-backends", "--max-endpoints"),
        }
    }

    #[test]
    fn a_role_sizes_what_it_uses_and_leaves_the_rest_at_one_entry() {
        let edge = MapSizes::new(
            Uses {
                packet_lb: true,
                xdp: true,
                packet_events: true,
                ..Default::default()
            },
            settings(),
        );
        assert_eq!(edge.get(abi::lb::names::SERVICES), Some(200));
        assert_eq!(edge.get(abi::event::names::LIMIT), Some(3000));
        assert_eq!(edge.get(abi::event::names::EVENTS), Some(1 << 16));
        assert_eq!(edge.get(abi::lb::names::TABLES), Some(101));
        assert_eq!(edge.get(abi::lb::names::SERVICE_IDS), Some(101));
        assert_eq!(edge.get(abi::lb::names::BACKEND_STATS), Some(1001));
        assert_eq!(edge.get(abi::lb::names::CONNTRACK), Some(4096));
        assert_eq!(edge.get("OXI_NEXTHOP"), Some(1001));
        for unused in [
            abi::endpoint::names::ENDPOINTS,
            abi::policy::names::POLICY_CT,
            abi::nodeport::names::ENDPOINTS,
            abi::sock::names::REVNAT,
        ] {
            assert_eq!(edge.get(unused), Some(UNUSED), "{unused}");
        }
        // A node with the socket LB only: no per-packet counters or flows.
        let node = MapSizes::new(
            Uses {
                socket_lb: true,
                ..Default::default()
            },
            settings(),
        );
        assert_eq!(node.get(abi::lb::names::SERVICE_STATS), Some(UNUSED));
        assert_eq!(node.get(abi::lb::names::CONNTRACK), Some(UNUSED));
        assert_eq!(node.get(abi::sock::names::REVNAT), Some(1024));
        assert_eq!(node.get(abi::sock::names::AFFINITY), Some(2048));
        // The socket LB writes no events: no rate limiter (the ring stays, the agent drains it).
        assert_eq!(node.get(abi::event::names::LIMIT), Some(UNUSED));
        assert_eq!(node.get(abi::event::names::EVENTS), Some(1 << 16));
        assert_eq!(node.get(abi::sock::names::AFFINITY_TIMEOUT), Some(101));
        assert_eq!(node.get(abi::lb::names::BACKENDS), Some(1001));
        // NodePort acceleration: XDP, but not the edge program's services by id.
        let accel = MapSizes::new(
            Uses {
                packet_lb: true,
                nodeport: true,
                xdp: true,
                ..Default::default()
            },
            settings(),
        );
        assert_eq!(accel.get(abi::lb::names::SERVICE_IDS), Some(UNUSED));
        assert_eq!(accel.get("OXI_NEXTHOP"), Some(1001));
        // Limits: the setting, or less when the maps hold less.
        let l = node.limits(101, 1001);
        assert_eq!((l.services, l.backends), (100, 1000));
        let l = node.limits(51, 20_000);
        assert_eq!((l.services, l.backends), (50, 1000));
        assert!(l.services_setting.starts_with("the pinned maps"));
        assert_eq!(l.backends_setting, "--max-backends");
    }

    #[test]
    fn the_policy_conntrack_and_the_event_limiter_follow_their_settings_where_used() {
        let cni = MapSizes::new(
            Uses {
                packet_lb: true,
                socket_lb: true,
                cni: true,
                packet_events: true,
                ..Default::default()
            },
            settings(),
        );
        assert_eq!(cni.get(abi::policy::names::POLICY_CT), Some(8192));
        assert_eq!(cni.get(abi::event::names::LIMIT), Some(3000));
        assert_eq!(cni.get(abi::sock::names::REVNAT), Some(1024));
        // A DSR backend: its decapsulation counts drops as events; nothing else is used.
        let backend = MapSizes::dsr_backend(Events {
            ring_bytes: 4096,
            flows: 2000,
        });
        assert_eq!(backend.get(abi::event::names::LIMIT), Some(2000));
        assert_eq!(backend.get(abi::event::names::EVENTS), Some(4096));
        for unused in [
            abi::policy::names::POLICY_CT,
            abi::sock::names::REVNAT,
            abi::lb::names::CONNTRACK,
        ] {
            assert_eq!(backend.get(unused), Some(UNUSED), "{unused}");
        }
    }

    #[test]
    fn the_event_limiter_defaults_to_the_events_the_ring_holds() {
        // 104-byte records behind the ring's 8-byte header.
        assert_eq!(EVENT_RECORD_BYTES, 112);
        assert_eq!(default_event_flows(abi::event::DEFAULT_RING_BYTES), 9362);
        // Within the LRU range whatever the ring.
        assert_eq!(default_event_flows(4096), 1024);
        assert_eq!(default_event_flows(1 << 31), 16_777_216);
    }

    #[test]
    fn a_full_endpoint_map_names_the_flag() {
        let sizes = MapSizes::new(Uses::default(), settings());
        let err = |errno| {
            aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_elem",
                io_error: std::io::Error::from_raw_os_error(errno),
            })
        };
        let e = full_error_of("OXI_ENDPOINTS", err(libc::E2BIG), Some(&sizes));
        assert_eq!(
            e.to_string(),
            "OXI_ENDPOINTS is full: --max-endpoints is 50"
        );
        let e = full_error_of("OXI_ENDPOINTS", err(libc::EPERM), Some(&sizes));
        assert_eq!(e.to_string(), "writing OXI_ENDPOINTS");
    }

    #[test]
    fn a_setting_out_of_range_names_itself() {
        let e = check("--max-services", 0, 1..=10).unwrap_err();
        assert_eq!(e.to_string(), "--max-services: must be 1..=10, got 0");
        assert_eq!(check("--max-services", 10, 1..=10).unwrap(), 10);
    }
}
