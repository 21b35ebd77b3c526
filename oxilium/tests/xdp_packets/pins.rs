//! Pins left by an older version: `OXI_BACKENDS` was a hash map before it became an array, and
//! `OXI_CONNTRACK`'s entries were 48 bytes before they became 40. The loader moves their entries
//! into the new maps (established flows keep their backends and SNAT ports across the upgrade).
use crate::{bpffs::PinDir, xdp_lb::*};
use std::{ffi::CString, os::unix::ffi::OsStrExt};

/// BPF_MAP_CREATE of a hash map u32 → 24-byte value (an older version's `OXI_BACKENDS`), pinned
/// at `path`.
fn pin_old_backends(path: &std::path::Path) {
    pin_map(path, 1, 4, size_of::<abi::lb::Backend>() as u32, 16);
}

/// BPF_MAP_CREATE of a map of `map_type`, pinned at `path`.
fn pin_map(path: &std::path::Path, map_type: u32, key_size: u32, value_size: u32, max: u32) {
    #[repr(C)]
    #[derive(Default)]
    struct Create {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        rest: [u64; 12],
    }
    #[repr(C)]
    #[derive(Default)]
    struct Pin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        rest: [u64; 4],
    }
    let mut create = Create {
        map_type,
        key_size,
        value_size,
        max_entries: max,
        ..Default::default()
    };
    // SAFETY: a zero-padded bpf_attr prefix for BPF_MAP_CREATE (0).
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, &mut create, size_of::<Create>()) };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let name = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut pin = Pin {
        pathname: name.as_ptr() as u64,
        bpf_fd: fd as u32,
        ..Default::default()
    };
    // SAFETY: as above, for BPF_OBJ_PIN (6); `name` outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, 6, &mut pin, size_of::<Pin>()) };
    assert_eq!(r, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: our descriptor; the pin holds the map.
    unsafe { libc::close(fd as i32) };
}

/// Needs in addition: BPF_MAP_CREATE and BPF_OBJ_PIN from user space.
#[test]
fn an_older_versions_pinned_backends_are_moved_into_the_array() {
    use aya::maps::{Array, HashMap, Map, MapData, MapType};
    let pins = PinDir::new(&unique("old-pins"));
    let path = pins.path().join(abi::lb::names::BACKENDS);
    pin_old_backends(&path);
    let backend = |i: u8| abi::lb::Backend {
        addr: lb::compile::addr_bytes(format!("10.9.0.{i}").parse().unwrap()),
        port: 8080u16.to_be(),
        family: abi::lb::FAMILY_V4,
        service_id: 7,
        ..Default::default()
    };
    {
        let mut old: HashMap<MapData, u32, abi::lb::Backend> =
            HashMap::try_from(Map::HashMap(MapData::from_pin(&path).unwrap())).unwrap();
        for id in [3u32, 11, 15] {
            old.insert(id, backend(id as u8), 0).unwrap();
        }
    }
    let mut ebpf = loader::load_xdp(pins.path(), &[], XdpMode::default()).expect("loading");
    KernelMaps::from_ebpf(&mut ebpf).expect("the maps, with the array in place");
    let data = MapData::from_pin(&path).unwrap();
    assert_eq!(data.info().unwrap().map_type().unwrap(), MapType::Array);
    let array: Array<MapData, abi::lb::Backend> = Array::try_from(Map::Array(data)).unwrap();
    for id in [3u32, 11, 15] {
        assert_eq!(
            array.get(&id, 0).unwrap(),
            backend(id as u8),
            "backend {id}"
        );
    }
    let used = (0..64u32)
        .filter(|i| array.get(i, 0).unwrap().service_id != 0)
        .count();
    assert_eq!(used, 3, "nothing else was written");
}

/// The 48-byte conntrack entry of the older version (with its creation time).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct OldCtEntry {
    backend_id: u32,
    service_id: u32,
    created_ns: u64,
    last_seen_ns: u64,
    packets: u64,
    bytes: u64,
    snat_port: u16,
    flags: u16,
    svc_timeout_s: u32,
}

// SAFETY: repr(C), plain integers, no padding.
unsafe impl aya::Pod for OldCtEntry {}

/// Needs in addition: BPF_MAP_CREATE and BPF_OBJ_PIN from user space.
#[test]
fn an_older_versions_pinned_conntrack_is_converted() {
    use aya::maps::{HashMap, Map, MapData};
    let pins = PinDir::new(&unique("old-ct"));
    let path = pins.path().join(abi::lb::names::CONNTRACK);
    // BPF_MAP_TYPE_LRU_HASH (9), FlowKey → the older 48-byte entry.
    pin_map(&path, 9, size_of::<FlowKey>() as u32, 48, 64);
    let key = |i: u8| FlowKey {
        src: lb::compile::addr_bytes(format!("10.8.0.{i}").parse().unwrap()),
        dst: lb::compile::addr_bytes("10.9.9.9".parse().unwrap()),
        sport: (40_000 + i as u16).to_be(),
        dport: 80u16.to_be(),
        proto: 6,
        _pad: [0; 3],
    };
    let old = |i: u8| OldCtEntry {
        backend_id: 3 + i as u32,
        service_id: 7,
        created_ns: 1,
        last_seen_ns: 1_000 + i as u64,
        packets: 10 + i as u64,
        bytes: 1_000 * i as u64,
        snat_port: (2_000 + i as u16).to_be(),
        flags: abi::ct::ESTABLISHED,
        svc_timeout_s: 60,
    };
    {
        let mut m: HashMap<MapData, FlowKey, OldCtEntry> =
            HashMap::try_from(Map::LruHashMap(MapData::from_pin(&path).unwrap())).unwrap();
        for i in 1..=3 {
            m.insert(key(i), old(i), 0).unwrap();
        }
    }
    let mut ebpf = loader::load_xdp(pins.path(), &[], XdpMode::default()).expect("loading");
    KernelMaps::from_ebpf(&mut ebpf).expect("the maps, with the new conntrack in place");
    let data = MapData::from_pin(&path).unwrap();
    assert_eq!(
        data.info().unwrap().value_size() as usize,
        size_of::<CtEntry>()
    );
    let ct: HashMap<MapData, FlowKey, CtEntry> = HashMap::try_from(Map::LruHashMap(data)).unwrap();
    for i in 1..=3 {
        let o = old(i);
        let want = CtEntry {
            backend_id: o.backend_id,
            service_id: o.service_id,
            last_seen_ns: o.last_seen_ns,
            packets: o.packets,
            bytes: o.bytes,
            snat_port: o.snat_port,
            flags: o.flags,
            svc_timeout_s: o.svc_timeout_s,
        };
        assert_eq!(ct.get(&key(i), 0).unwrap(), want, "flow {i}");
    }
    assert_eq!(ct.keys().count(), 3, "nothing else was written");
}
