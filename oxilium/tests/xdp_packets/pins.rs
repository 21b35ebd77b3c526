//! Pins left by an older version: `OXI_BACKENDS` was a hash map before it became an array. The
//! loader moves its entries into the array at the same ids (established flows keep their
//! backends across the upgrade).
use crate::{bpffs::PinDir, xdp_lb::*};
use std::{ffi::CString, os::unix::ffi::OsStrExt};

/// BPF_MAP_CREATE of a hash map u32 → 24-byte value (an older version's `OXI_BACKENDS`), pinned
/// at `path`.
fn pin_old_backends(path: &std::path::Path) {
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
        map_type: 1, // BPF_MAP_TYPE_HASH
        key_size: 4,
        value_size: size_of::<abi::lb::Backend>() as u32,
        max_entries: 16,
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
