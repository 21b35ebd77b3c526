//! `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_LOOKUP_BATCH` on u32 → u32 maps (a map of maps, the
//! selection tables) and lookups of whole arrays (the backends), which aya does not wrap.
//!
//! Each update of an array/hash of maps from user space waits for an RCU grace period (the kernel
//! makes sure no program still runs with the old inner map before the syscall returns; ~10 ms on
//! this machine kind). A batch update waits once for the whole batch (Linux ≥ 6.9), so the agent
//! swaps every new selection table of a pass in one call: 12 000 tables cost one grace period
//! instead of two minutes of them. Likewise a selection table (up to 131 071 slots) is filled
//! and read back in one syscall each instead of one per slot.
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr`.
#[repr(C, align(8))]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Sets `keys[i]` → `values[i]` (u32 keys and u32 values: indices and inner map fds) in one
/// syscall. On an error, returns it with how many leading elements were written.
pub fn update_u32(
    map: BorrowedFd<'_>,
    keys: &[u32],
    values: &[u32],
) -> Result<(), (io::Error, usize)> {
    assert_eq!(keys.len(), values.len());
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: the kernel reads `count` keys and values from the slices, which outlive the call.
    unsafe { bpf(BPF_MAP_UPDATE_BATCH, &mut attr) }.map_err(|e| (e, attr.count as usize))
}

/// The values of keys `0..n` of an array of u32 in one syscall (a lookup batch from the start).
pub fn lookup_array_u32(map: BorrowedFd<'_>, n: u32) -> io::Result<Vec<u32>> {
    lookup_array(map, n)
}

/// The values of keys `0..n` of an array (values of type `V`) in one syscall.
pub fn lookup_array<V: aya::Pod + Default>(map: BorrowedFd<'_>, n: u32) -> io::Result<Vec<V>> {
    let mut keys = vec![0u32; n as usize];
    let mut values = vec![V::default(); n as usize];
    let mut out_batch = 0u32;
    let mut attr = BatchAttr {
        out_batch: &mut out_batch as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: n,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: the kernel writes at most `count` keys and values into the buffers, which outlive
    // the call, and one batch token into `out_batch`.
    match unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
        // ENOENT: the last batch (the whole array fitted).
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e),
    }
    if attr.count != n || keys.iter().enumerate().any(|(i, k)| *k != i as u32) {
        return Err(io::Error::other(format!(
            "lookup batch returned {} of {n} elements",
            attr.count
        )));
    }
    Ok(values)
}

/// # Safety
/// `attr`'s pointers must be valid for what `cmd` reads and writes.
unsafe fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: per the caller; the size passed is the struct's.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
