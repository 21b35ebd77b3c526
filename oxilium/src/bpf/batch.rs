//! `BPF_MAP_UPDATE_BATCH` on a map of maps, which aya does not wrap.
//!
//! Each update of an array/hash of maps from user space waits for an RCU grace period (the kernel
//! makes sure no program still runs with the old inner map before the syscall returns; ~10 ms on
//! this machine kind). A batch update waits once for the whole batch (Linux ≥ 6.9), so the agent
//! swaps every new selection table of a pass in one call: 12 000 tables cost one grace period
//! instead of two minutes of them.
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

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
    // SAFETY: `attr` is a valid bpf_attr prefix for this command, sized as passed; the kernel
    // reads `count` keys and values from the slices, which outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    if r < 0 {
        return Err((io::Error::last_os_error(), attr.count as usize));
    }
    Ok(())
}
