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
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The kernel's internal "operation not supported" (not in libc).
pub const ENOTSUPP: i32 = 524;

/// True for the errors of a kernel without batch operations (before 5.6: EINVAL for the unknown
/// command) or of a map type without them.
pub fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP)
    )
}

/// Elements asked for per syscall by a walk of a hash map: ~400 KiB of buffers for the
/// conntrack map's 40-byte keys and values, whatever the map's size.
pub const WALK_CHUNK: u32 = 4096;
/// A walk never asks for more than this many elements at once (a bucket chain longer than that
/// would be a broken hash).
const WALK_CHUNK_MAX: u32 = 1 << 20;

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
    update_counted(map, keys, values)
}

/// Sets `keys[i]` → `values[i]` in any map with update batches, in one syscall (Linux ≥ 5.6).
pub fn update<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> io::Result<()> {
    update_counted(map, keys, values).map_err(|(e, _)| e)
}

/// [`update`], and on an error how many leading elements the kernel wrote.
fn update_counted<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
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

/// Walks every element of a hash map (HASH, LRU_HASH, their per-CPU kinds excluded) with
/// `BPF_MAP_LOOKUP_BATCH` (Linux ≥ 5.6), `chunk` elements per syscall, and calls `f` on each.
/// The kernel copies whole buckets, each under its lock: an element the datapath rewrites
/// meanwhile is seen once (old or new); elements added or removed during the walk may or may not
/// be seen. A bucket longer than `chunk` makes the kernel answer ENOSPC before copying anything:
/// the chunk is doubled and the same batch asked again. Memory: one chunk of keys and values.
/// An error of a kernel without batches is returned before `f` is called ([`unsupported`]).
/// Returns the chunk the walk ended with (larger than asked after an ENOSPC).
pub fn walk_hash<K: aya::Pod + Default, V: aya::Pod + Default>(
    map: BorrowedFd<'_>,
    chunk: u32,
    mut f: impl FnMut(&K, &V),
) -> io::Result<u32> {
    let mut chunk = chunk.max(1);
    let mut keys = vec![K::default(); chunk as usize];
    let mut values = vec![V::default(); chunk as usize];
    // The batch tokens (a bucket index for hash maps; 8 bytes leave room for any kind).
    let mut token = 0u64;
    let mut next = 0u64;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &mut token as *mut u64 as u64
            },
            out_batch: &mut next as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: the kernel reads a token from `token`, writes one into `next` and at most
        // `count` keys and values into the buffers, all of which outlive the call.
        let last = match unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
            Ok(()) => false,
            // The last batch (possibly empty).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < WALK_CHUNK_MAX => {
                chunk = (chunk * 2).min(WALK_CHUNK_MAX);
                keys.resize(chunk as usize, K::default());
                values.resize(chunk as usize, V::default());
                continue;
            }
            Err(e) => return Err(e),
        };
        let n = (attr.count as usize).min(keys.len());
        for (k, v) in keys[..n].iter().zip(&values[..n]) {
            f(k, v);
        }
        if last {
            return Ok(chunk);
        }
        token = next;
        first = false;
    }
}

/// Deletes `keys` from a hash map with `BPF_MAP_DELETE_BATCH` (Linux ≥ 5.6), keys already gone
/// skipped (the kernel stops at one: the rest is asked again). Returns how many were deleted.
pub fn delete_keys<K: aya::Pod>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<usize> {
    let mut done = 0;
    let mut deleted = 0;
    while done < keys.len() {
        let rest = &keys[done..];
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: the kernel reads `count` keys from the slice, which outlives the call.
        match unsafe { bpf(BPF_MAP_DELETE_BATCH, &mut attr) } {
            Ok(()) => return Ok(deleted + rest.len()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let n = (attr.count as usize).min(rest.len());
                deleted += n;
                done += n + 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
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
