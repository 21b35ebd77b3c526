//! The socket-LB (sock-lb/ object): loads it with every map pinned under the agent's pin folder
//! (so it shares `OXI_SERVICES`, `OXI_BACKENDS` and `OXI_TABLES` with the XDP and tc objects, and
//! its own reverse-NAT and affinity maps survive a restart), finds or mounts a cgroup v2
//! hierarchy, and attaches the eight cgroup sock_addr programs to a cgroup through bpf_links.
//!
//! Links are pinned when a pin folder is given (`link_sock_<program>_<cgroup id>`): the programs
//! then keep translating while the agent restarts, and a restarted agent swaps in its own programs
//! without a gap. Without a pin folder the links live as long as the [`SockLb`].
use super::{
    lb_maps::KernelMaps,
    loader::{self, prepare_pin_dir},
    objects,
};
use abi::{
    lb::ServiceValue,
    sock::{
        self as abi_sock, AffinityKey, AffinityValue, RevKey, RevValue, SVC_FLAG_AFFINITY,
        SockConfig,
    },
};
use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupSockAddr,
        cgroup_sock_addr::CgroupSockAddrAttachType,
        links::{FdLink, PinnedLink},
    },
};
use std::{
    ffi::CString,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// The programs of the object and their attach points.
pub const PROGRAMS: [(&str, CgroupSockAddrAttachType); 8] = [
    ("oxilium_connect4", CgroupSockAddrAttachType::Connect4),
    ("oxilium_connect6", CgroupSockAddrAttachType::Connect6),
    ("oxilium_sendmsg4", CgroupSockAddrAttachType::UDPSendMsg4),
    ("oxilium_sendmsg6", CgroupSockAddrAttachType::UDPSendMsg6),
    ("oxilium_recvmsg4", CgroupSockAddrAttachType::UDPRecvMsg4),
    ("oxilium_recvmsg6", CgroupSockAddrAttachType::UDPRecvMsg6),
    (
        "oxilium_getpeername4",
        CgroupSockAddrAttachType::GetPeerName4,
    ),
    (
        "oxilium_getpeername6",
        CgroupSockAddrAttachType::GetPeerName6,
    ),
];

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The root of a cgroup v2 hierarchy: the first cgroup2 mount of this mount namespace, or a new
/// one at `fallback` (created if needed). Returns the root and whether this call mounted it.
pub fn cgroup2_root(fallback: &Path) -> Result<(PathBuf, bool)> {
    if let Some(p) = find_cgroup2()? {
        return Ok((p, false));
    }
    mount_cgroup2(fallback)?;
    Ok((fallback.to_path_buf(), true))
}

/// Mounts the cgroup v2 hierarchy at `dir` (created if needed). cgroup2 may be mounted any number
/// of times: every mount shows the same hierarchy.
pub fn mount_cgroup2(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let target = CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: plain mount(2) with valid C strings.
    let rc = unsafe {
        libc::mount(
            c"none".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "mounting cgroup2 on {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The mount point of a cgroup2 hierarchy's root, from /proc/self/mountinfo.
///
/// Read with `procfs` (rather than `nix`, which has no mountinfo reader): a maintained parser of
/// the whole line format (optional fields, the ` - ` separator, file system type), the one most
/// Rust tools use. It hands the mount point over as the kernel wrote it, though, so the octal
/// escapes are undone here.
pub fn find_cgroup2() -> Result<Option<PathBuf>> {
    let mounts = procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .context("reading mountinfo")?;
    Ok(mounts
        .iter()
        .filter_map(cgroup2_root_mount)
        .find(|p| is_cgroup2(p)))
}

/// Where a mount shows the root of a cgroup2 hierarchy (not a subtree of it).
fn cgroup2_root_mount(m: &procfs::process::MountInfo) -> Option<PathBuf> {
    (m.fs_type == "cgroup2" && m.root == "/").then(|| PathBuf::from(unescape(&m.mount_point)))
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(p: &Path) -> String {
    let b = p.as_os_str().as_encoded_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\' && i + 3 < b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 4]).ok())
            .flatten()
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        if let Some(v) = octal {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True when `p` is on a cgroup v2 file system.
pub fn is_cgroup2(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs(2) into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC }
}

/// The cgroup id (inode number of its folder on cgroup2).
pub fn cgroup_id(cgroup: &Path) -> Result<u64> {
    Ok(fs::metadata(cgroup)
        .with_context(|| format!("cgroup {}", cgroup.display()))?
        .ino())
}

fn link_pin(pin_dir: &Path, prog: &str, cgroup_id: u64) -> PathBuf {
    pin_dir.join(format!(
        "link_sock_{}_{cgroup_id}",
        prog.trim_start_matches("oxilium_")
    ))
}

/// The socket-LB maps (the shared LB maps are reached with [`SockLb::lb_maps`]).
pub struct SockMaps {
    revnat: HashMap<MapData, RevKey, RevValue>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    affinity_timeout: Array<MapData, u32>,
    stats: PerCpuArray<MapData, u64>,
    config: Array<MapData, SockConfig>,
}

pub struct SockLb {
    ebpf: Ebpf,
    pub maps: SockMaps,
}

impl SockLb {
    /// Splits the loaded object from its maps (the maps can then join the reconciler's datapath).
    pub fn into_parts(self) -> (Ebpf, SockMaps) {
        (self.ebpf, self.maps)
    }

    /// Loads and verifies the eight programs, with every map pinned in `pin_dir` (reused when
    /// the XDP / tc objects or an earlier run already pinned them).
    pub fn load(pin_dir: &Path) -> Result<SockLb> {
        prepare_pin_dir(pin_dir)?;
        let mut ebpf = super::loader::load_pinned(objects::sock_lb(), pin_dir)
            .context("loading the sock-lb object")?;
        for (name, _) in PROGRAMS {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name}"))?
                .try_into()?;
            loader::verify(name, || prog.load())?;
        }
        let maps = SockMaps {
            revnat: super::loader::take_map(&mut ebpf, abi_sock::names::REVNAT)?,
            affinity: super::loader::take_map(&mut ebpf, abi_sock::names::AFFINITY)?,
            affinity_timeout: super::loader::take_map(
                &mut ebpf,
                abi_sock::names::AFFINITY_TIMEOUT,
            )?,
            stats: super::loader::take_map(&mut ebpf, abi_sock::names::STATS)?,
            config: super::loader::take_map(&mut ebpf, abi_sock::names::CONFIG)?,
        };
        Ok(SockLb { ebpf, maps })
    }

    /// The shared LB maps (services, backends, tables, ...) as this object sees them: the same
    /// pinned maps as the XDP object's. Callable once.
    pub fn lb_maps(&mut self) -> Result<KernelMaps> {
        KernelMaps::from_ebpf(&mut self.ebpf)
    }

    /// Attaches the eight programs to the cgroup v2 folder `cgroup` (every socket created by a
    /// process in it or below it is translated). With `pin_dir`, the links are pinned there and
    /// replace the links an earlier run pinned for the same cgroup; without, they are detached
    /// when this `SockLb` is dropped.
    pub fn attach(&mut self, cgroup: &Path, pin_dir: Option<&Path>) -> Result<()> {
        if !is_cgroup2(cgroup) {
            bail!("{} is not a cgroup v2 folder", cgroup.display());
        }
        let id = cgroup_id(cgroup)?;
        let fd = fs::File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        for (name, _) in PROGRAMS {
            let prog: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name}"))?
                .try_into()?;
            // The old link stays attached until the new one is pinned: no window without
            // translation. Running both for a moment is harmless: the second program sees a
            // backend address, which is no frontend and has no reverse entry.
            let old: Option<FdLink> = match pin_dir {
                Some(dir) => PinnedLink::from_pin(link_pin(dir, name, id))
                    .ok()
                    .map(|p| p.unpin())
                    .transpose()
                    .context("unpinning the previous sock-lb link")?,
                None => None,
            };
            let link_id = prog
                .attach(&fd, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", cgroup.display()))?;
            if let Some(dir) = pin_dir {
                let link: FdLink = prog
                    .take_link(link_id)?
                    .try_into()
                    .context("cgroup link is not a bpf_link (kernel ≥ 5.7 needed)")?;
                let pin = link_pin(dir, name, id);
                link.pin(&pin)
                    .with_context(|| format!("pinning {}", pin.display()))?;
            }
            drop(old);
        }
        Ok(())
    }
}

/// Detaches the pinned links of `cgroup` (by removing their pins); returns how many there were.
pub fn detach(pin_dir: &Path, cgroup: &Path) -> Result<usize> {
    let id = cgroup_id(cgroup)?;
    detach_id(pin_dir, id)
}

/// As [`detach`], by cgroup id (the cgroup folder may be gone already).
pub fn detach_id(pin_dir: &Path, cgroup_id: u64) -> Result<usize> {
    let mut n = 0;
    for (name, _) in PROGRAMS {
        let pin = link_pin(pin_dir, name, cgroup_id);
        if pin.exists() {
            fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// A service value with ClientIP affinity switched on or off (the timeout goes to
/// [`SockMaps::set_affinity_timeout`], written before the service value).
pub fn with_affinity(mut v: ServiceValue, on: bool) -> ServiceValue {
    if on {
        v.flags |= SVC_FLAG_AFFINITY;
    } else {
        v.flags &= !SVC_FLAG_AFFINITY;
    }
    v
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, kernel ≥ 5.14): the
/// value `bpf_get_netns_cookie` gives the socket programs for sockets of this namespace.
pub fn own_netns_cookie() -> Result<u64> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket(2); the fd is owned (and closed) by `sock`.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt into a u64 of the given length.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 || cookie == 0 {
        bail!(
            "reading SO_NETNS_COOKIE (kernel ≥ 5.14 needed): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(cookie)
}

impl SockMaps {
    /// `Some(cookie)`: only sockets of that network namespace are translated (the pods' traffic is
    /// left to the pod tc programs); `None`: every socket of the cgroup.
    pub fn set_host_netns_only(&mut self, cookie: Option<u64>) -> Result<()> {
        let c = SockConfig {
            host_netns_cookie: cookie.unwrap_or(0),
        };
        self.config.set(0, c, 0).context("writing OXI_SOCK_CONFIG")
    }

    /// Sets the affinity timeout of a service id (0 disables affinity even with the flag).
    pub fn set_affinity_timeout(&mut self, service_id: u32, timeout_s: u32) -> Result<()> {
        self.affinity_timeout
            .set(service_id, timeout_s, 0)
            .context("writing OXI_SOCK_AFFINITY_TIMEOUT")
    }

    pub fn affinity_timeout(&self, service_id: u32) -> Result<u32> {
        Ok(self.affinity_timeout.get(&service_id, 0)?)
    }

    /// Forgets the affinity entries of a service (service removed or its id about to be reused);
    /// returns how many.
    pub fn flush_affinity(&mut self, service_id: u32) -> Result<usize> {
        let keys: Vec<AffinityKey> = self
            .affinity
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.service_id == service_id)
            .collect();
        for k in &keys {
            let _ = self.affinity.remove(k);
        }
        Ok(keys.len())
    }

    pub fn affinity_entries(&self) -> Vec<(AffinityKey, AffinityValue)> {
        self.affinity.iter().filter_map(|r| r.ok()).collect()
    }

    /// The LRU reverse entries (unconnected UDP; connected sockets keep theirs in their own
    /// storage, `OXI_SOCK_REVNAT_SK`).
    pub fn revnat_entries(&self) -> Vec<(RevKey, RevValue)> {
        self.revnat.iter().filter_map(|r| r.ok()).collect()
    }

    /// A counter of `abi::sock::reason`, summed over CPUs.
    pub fn counter(&self, reason: u32) -> u64 {
        self.stats
            .get(&reason, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        let u = |s: &str| unescape(Path::new(s));
        assert_eq!(u(r"/a\040b"), "/a b");
        assert_eq!(u("/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(u(r"/x\"), r"/x\");
    }

    #[test]
    fn mountinfo_cgroup2_roots() {
        let line = |root: &str, point: &str, fs: &str| {
            procfs::process::MountInfo::from_line(&format!(
                "35 24 0:30 {root} {point} rw,nosuid shared:9 - {fs} {fs} rw,nsdelegate"
            ))
            .unwrap()
        };
        assert_eq!(
            cgroup2_root_mount(&line("/", r"/run/my\040cgroup", "cgroup2")),
            Some(PathBuf::from("/run/my cgroup"))
        );
        assert_eq!(
            cgroup2_root_mount(&line("/kubepods", "/x", "cgroup2")),
            None
        );
        assert_eq!(cgroup2_root_mount(&line("/", "/sys", "sysfs")), None);
    }

    #[test]
    fn link_pins_are_per_program_and_cgroup() {
        let p = link_pin(Path::new("/p"), "oxilium_connect4", 7);
        assert_eq!(p, Path::new("/p/link_sock_connect4_7"));
    }

    #[test]
    fn affinity_flag_round_trips() {
        let v = with_affinity(ServiceValue::default(), true);
        assert_eq!(v.flags & SVC_FLAG_AFFINITY, SVC_FLAG_AFFINITY);
        assert_eq!(with_affinity(v, false).flags, 0);
    }
}
