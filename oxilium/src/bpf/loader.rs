//! Loads the embedded objects with their maps pinned under the pin folder (reusing the pins of an
//! earlier run, so flows survive a restart) and attaches programs through pinned bpf_links, which
//! a restarted agent atomically points at its own freshly loaded program.
use super::objects;
use abi::lb::names;
use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        tc::TcAttachOptions,
        xdp::XdpLink,
    },
};
use std::{
    ffi::CString,
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Makes sure `dir` exists on a bpf file system (mounting one at /sys/fs/bpf if needed).
pub fn prepare_pin_dir(dir: &Path) -> Result<()> {
    let bpffs = Path::new("/sys/fs/bpf");
    if dir.starts_with(bpffs) && !is_bpffs(bpffs) {
        let (src, target, fstype) = (c"bpf", CString::new("/sys/fs/bpf")?, c"bpf");
        // SAFETY: plain mount(2) with valid C strings.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bail!(
                "mounting bpffs on /sys/fs/bpf: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    fs::create_dir_all(dir).with_context(|| format!("creating pin folder {}", dir.display()))?;
    if !is_bpffs(dir) {
        bail!(
            "pin folder {} is not on a bpf file system (mount -t bpf bpf DIR)",
            dir.display()
        );
    }
    Ok(())
}

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs(2) into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Every map name the agent pins: the shared LB maps, the NodePort maps, the socket LB's and the
/// pod programs'. An object carries some of them; each one it carries is pinned.
fn pinned_names() -> impl Iterator<Item = &'static str> {
    names::PINNED
        .into_iter()
        .chain(abi::nodeport::names::PINNED)
        .chain(abi::sock::names::PINNED)
        .chain(abi::sock::pod::names::PINNED)
        .chain(abi::endpoint::names::PINNED)
        .chain(abi::event::names::PINNED)
        .chain(abi::policy::names::PINNED)
        .chain(abi::bandwidth::names::PINNED)
}

/// Loads an object with its maps pinned under `pin_dir` (every name of [`pinned_names`]): a pin
/// that exists is reused, so every object and every restart share one set.
pub fn load_pinned(object: &[u8], pin_dir: &Path) -> Result<Ebpf> {
    load_pinned_with(object, pin_dir, None)
}

/// [`load_pinned`] for the XDP object attached in `mode`: in generic (skb) mode its
/// `OXI_GENERIC_XDP` global is set, so that it keeps CHECKSUM_PARTIAL seeds right.
pub fn load_xdp_object(pin_dir: &Path, mode: XdpMode) -> Result<Ebpf> {
    let generic = matches!(mode, XdpMode::Skb).then_some(("OXI_GENERIC_XDP", 1u8));
    load_pinned_with(objects::xdp(), pin_dir, generic)
}

fn load_pinned_with(object: &[u8], pin_dir: &Path, global: Option<(&str, u8)>) -> Result<Ebpf> {
    let paths: Vec<(&'static str, PathBuf)> =
        pinned_names().map(|n| (n, pin_dir.join(n))).collect();
    let mut loader = EbpfLoader::new();
    if let Some(sizes) = super::sizes::current() {
        for (name, n) in sizes.iter() {
            loader.map_max_entries(name, n);
        }
        static CHECKED: std::sync::Once = std::sync::Once::new();
        CHECKED.call_once(|| keep_pinned_sizes(pin_dir, sizes));
    }
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let value;
    if let Some((name, v)) = global {
        value = v;
        loader.override_global(name, &value, true);
    }
    let old_backends = take_old_backends(pin_dir)?;
    let old_conntrack = super::ct_upgrade::take(pin_dir)?;
    let loaded = loader.load(object).context(
        "loading the eBPF object (are the pinned maps from an incompatible version? remove the pin folder)",
    );
    if let Some((old, entries)) = old_conntrack {
        let path = pin_dir.join(names::CONNTRACK);
        if loaded.is_ok() && path.exists() {
            super::ct_upgrade::put(pin_dir, &entries)?;
        } else {
            // Not loaded, or an object without conntrack: the older map waits for the next.
            old.pin(&path)
                .with_context(|| format!("pinning the older {} again", names::CONNTRACK))?;
        }
    }
    if let Some((old, entries)) = old_backends {
        let path = pin_dir.join(names::BACKENDS);
        if loaded.is_err() {
            // Nothing was taken over: the older map goes back where it was.
            old.pin(&path)
                .with_context(|| format!("pinning the older {} again", names::BACKENDS))?;
        } else {
            put_backends(&path, &entries)?;
        }
    }
    loaded
}

/// A map pinned by an earlier run with another size than asked is kept as it is, with its
/// entries (the flows, services and counters it holds survive the restart, as with any pin; the
/// programs use the map they are given, whatever its size): logged here, once per start. The
/// reconciler's limits follow the pinned size when it is the smaller (see
/// [`super::sizes::MapSizes::limits`]). A new size needs the pins removed first
/// (`oxilium agent --cleanup`), which ends the established flows.
///
/// Except a pinned map of [`UNUSED`](super::sizes::UNUSED) size that is wanted larger now: the
/// earlier start's role did not use it (e.g. conntrack on a node that had no `--device`), so its
/// pin is removed and the first load creates it at the size asked.
fn keep_pinned_sizes(pin_dir: &Path, sizes: &super::sizes::MapSizes) {
    for (name, want) in sizes.iter() {
        let path = pin_dir.join(name);
        let Ok(map) = aya::maps::MapData::from_pin(&path) else {
            continue;
        };
        let Ok(have) = map.info().map(|i| i.max_entries()) else {
            continue;
        };
        if have == want {
            continue;
        }
        if have == super::sizes::UNUSED && fs::remove_file(&path).is_ok() {
            tracing::info!(
                map = name,
                size = want,
                "a map the earlier start did not use is created anew"
            );
            continue;
        }
        tracing::warn!(
            map = name,
            pinned = have,
            asked = want,
            "a pinned map keeps the size an earlier start gave it (resize: `oxilium agent --cleanup`, then start)"
        );
    }
}

/// An older version pinned `OXI_BACKENDS` as a hash map (backend id → backend); it is an array
/// indexed by id now. When the pin holds such a map, its entries are read and the pin removed
/// before the object is loaded (which then creates and pins the array); [`put_backends`] writes
/// them back at the same ids, so established flows keep their backends across the upgrade. The
/// older programs still attached keep the older map until their links are replaced.
type OldBackends = (aya::maps::MapData, Vec<(u32, abi::lb::Backend)>);

fn take_old_backends(pin_dir: &Path) -> Result<Option<OldBackends>> {
    use aya::maps::{HashMap, Map, MapData, MapType};
    let path = pin_dir.join(names::BACKENDS);
    let Ok(data) = MapData::from_pin(&path) else {
        return Ok(None);
    };
    if data.info()?.map_type()? != MapType::Hash {
        return Ok(None);
    }
    let fd = data.fd().as_fd().try_clone_to_owned()?;
    let map: HashMap<MapData, u32, abi::lb::Backend> =
        HashMap::try_from(Map::HashMap(MapData::from_fd(fd)?))
            .with_context(|| format!("reading the older {} (a hash map)", names::BACKENDS))?;
    let entries = map
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading the older {} (a hash map)", names::BACKENDS))?;
    fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
    tracing::info!(
        backends = entries.len(),
        "{} pinned by an older version as a hash map: moved into the array",
        names::BACKENDS
    );
    Ok(Some((data, entries)))
}

fn put_backends(path: &Path, entries: &[(u32, abi::lb::Backend)]) -> Result<()> {
    use aya::maps::{Array, Map, MapData};
    let mut array: Array<MapData, abi::lb::Backend> =
        Array::try_from(Map::Array(MapData::from_pin(path)?))
            .with_context(|| format!("opening {}", path.display()))?;
    for (id, b) in entries {
        array
            .set(*id, *b, 0)
            .with_context(|| format!("{}: backend {id} from the older map", names::BACKENDS))?;
    }
    Ok(())
}

/// Takes a map out of a loaded object, typed.
pub fn take_map<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Result<T> {
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("map {name} missing from the object"))?;
    T::try_from(map).with_context(|| format!("map {name}"))
}

/// Attaches a tc program to `dev` through a TCX link pinned at `pin`; when `pin` already holds a
/// link (an earlier run), the link is pointed at this program atomically instead.
pub fn attach_tc_pinned(
    prog: &mut SchedClassifier,
    dev: &str,
    attach: TcAttachType,
    pin: &Path,
) -> Result<()> {
    attach_tc_pinned_in(prog, dev, attach, pin, LinkOrder::default())
}

/// [`attach_tc_pinned`] at `order` among the device's TCX programs (a new link; a pinned link
/// is replaced where it is).
pub fn attach_tc_pinned_in(
    prog: &mut SchedClassifier,
    dev: &str,
    attach: TcAttachType,
    pin: &Path,
    order: LinkOrder,
) -> Result<()> {
    let id = match PinnedLink::from_pin(pin) {
        Ok(old) => {
            let fd = old.unpin().context("unpinning the previous tc link")?;
            prog.attach_to_link(SchedClassifierLink::try_from(fd)?)
                .with_context(|| format!("replacing the tc program on {dev}"))?
        }
        Err(_) => prog
            .attach_with_options(dev, attach, TcAttachOptions::TcxOrder(order))
            .with_context(|| format!("attaching tc to {dev}"))?,
    };
    let link = prog.take_link(id)?;
    let fd: FdLink = link
        .try_into()
        .context("tc link is not a bpf_link (TCX needs kernel ≥ 6.6)")?;
    fd.pin(pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok(())
}

pub fn link_pin(pin_dir: &Path, kind: &str, iface: &str) -> PathBuf {
    pin_dir.join(format!("link_{kind}_{iface}"))
}

/// Loads the XDP object and attaches `oxilium_lb` to every interface.
pub fn load_xdp(pin_dir: &Path, ifaces: &[String], mode: XdpMode) -> Result<Ebpf> {
    let mut ebpf = load_xdp_object(pin_dir, mode)?;
    let prog: &mut Xdp = ebpf
        .program_mut("oxilium_lb")
        .context("program oxilium_lb")?
        .try_into()?;
    verify("oxilium_lb", || prog.load())?;
    for iface in ifaces {
        attach_xdp_pinned(prog, iface, mode, &link_pin(pin_dir, "xdp", iface))?;
    }
    Ok(ebpf)
}

/// Attaches an XDP program to `iface` through a bpf_link pinned at `pin`; when `pin` already
/// holds a link (an earlier run), the link is pointed at this program atomically instead.
pub fn attach_xdp_pinned(prog: &mut Xdp, iface: &str, mode: XdpMode, pin: &Path) -> Result<()> {
    let id = match PinnedLink::from_pin(pin) {
        Ok(old) => {
            let fd = old.unpin().context("unpinning the previous XDP link")?;
            prog.attach_to_link(XdpLink::try_from(fd)?)
                .with_context(|| format!("replacing the XDP program on {iface}"))?
        }
        Err(_) => prog
            .attach(iface, mode)
            .with_context(|| format!("attaching XDP to {iface}"))?,
    };
    let link = prog.take_link(id)?;
    let fd: FdLink = link.try_into().context("XDP link is not a bpf_link")?;
    fd.pin(pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok(())
}

/// Detaches everything and removes the pin folder (`oxilium agent --cleanup`).
pub fn remove_pins(pin_dir: &Path) -> Result<()> {
    if pin_dir.exists() {
        fs::remove_dir_all(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    }
    Ok(())
}

/// How often a program load is tried when the verifier gives up with EAGAIN.
const LOAD_ATTEMPTS: u32 = 5;

/// Loads (verifies) one program, trying again when the kernel answers EAGAIN: the verifier
/// abandons a long verification when a signal is pending for the loading thread (a child process
/// exiting is enough), and a second attempt succeeds. libbpf retries the same way.
pub fn verify(
    name: &str,
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<()> {
    let mut attempt = 1;
    loop {
        match load() {
            Ok(()) => return Ok(()),
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < LOAD_ATTEMPTS =>
            {
                tracing::warn!(
                    program = name,
                    attempt,
                    "verifier interrupted (EAGAIN), retrying"
                );
                attempt += 1;
            }
            Err(e) => return Err(e).with_context(|| format!("verifying {name}")),
        }
    }
}
