//! Word-wide writes (and compares) of flow keys and addresses. LLVM merges a run of stores (or a copy of more
//! than a few bytes) into a `memset` / `memcpy`, which the BPF backend emits as a call to a
//! byte-at-a-time loop subprogram: on the per-packet path these go through volatile 8- or 4-byte
//! stores of known alignment, which are never merged.
use abi::lb::{Addr, FlowKey};

/// The words of the IPv4-mapped prefix `::ffff:0:0/96` after its first 8 zero bytes.
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Zeroes the flow key at `k`.
///
/// # Safety
/// `k` must be valid for writes and 8-byte aligned (the key of a `crate::parse::Flow` is).
#[inline(always)]
pub unsafe fn zero_key(k: *mut FlowKey) {
    let p = k as *mut u64;
    // SAFETY: the caller's; 40 bytes = 5 words.
    unsafe {
        p.write_volatile(0);
        p.add(1).write_volatile(0);
        p.add(2).write_volatile(0);
        p.add(3).write_volatile(0);
        p.add(4).write_volatile(0);
    }
}

/// Writes the IPv4-mapped address of `v4` (the four octets in network order, as read from a
/// header) at `a`.
///
/// # Safety
/// `a` must be valid for writes and 8-byte aligned.
#[inline(always)]
pub unsafe fn set_v4_mapped(a: *mut Addr, v4: [u8; 4]) {
    let p = a as *mut u32;
    // SAFETY: the caller's.
    unsafe {
        (a as *mut u64).write_volatile(0);
        p.add(2).write_volatile(V4_MAPPED_WORD);
        p.add(3).write_volatile(u32::from_ne_bytes(v4));
    }
}

/// Copies the address at `src` to `dst`, four bytes at a time.
///
/// # Safety
/// Both must be valid and 4-byte aligned (map values and the scratch space are 8-aligned;
/// addresses in the abi structs start at offsets that are multiples of 4).
#[inline(always)]
pub unsafe fn copy_addr(dst: *mut Addr, src: *const Addr) {
    let (d, s) = (dst as *mut u32, src as *const u32);
    // SAFETY: the caller's.
    unsafe {
        d.write_volatile(s.read());
        d.add(1).write_volatile(s.add(1).read());
        d.add(2).write_volatile(s.add(2).read());
        d.add(3).write_volatile(s.add(3).read());
    }
}

/// Copies an address out of a packet header (2-byte aligned, as the header structs are) to
/// `dst`, in 16-bit loads and 4-byte stores.
///
/// # Safety
/// `src` must be readable for 16 bytes and 2-byte aligned; `dst` as for [`copy_addr`].
#[inline(always)]
pub unsafe fn copy_addr_from_header(dst: *mut Addr, src: *const Addr) {
    let (d, s) = (dst as *mut u32, src as *const u16);
    let mut i = 0;
    while i < 4 {
        // SAFETY: the caller's.
        unsafe {
            let (lo, hi) = (s.add(2 * i).read().to_ne_bytes(), s.add(2 * i + 1).read());
            let hi = hi.to_ne_bytes();
            d.add(i)
                .write_volatile(u32::from_ne_bytes([lo[0], lo[1], hi[0], hi[1]]));
        }
        i += 1;
    }
}

/// Sets the protocol of the key at `k` and zeroes its padding, in one 4-byte store.
///
/// # Safety
/// `k` must be valid for writes and 4-byte aligned (keys in the scratch space are).
#[inline(always)]
pub unsafe fn set_proto(k: *mut FlowKey, proto: u8) {
    const _: () = assert!(core::mem::offset_of!(FlowKey, proto) % 4 == 0);
    // SAFETY: the caller's; the protocol and its 3 padding bytes are the key's last word.
    unsafe {
        (core::ptr::addr_of_mut!((*k).proto) as *mut u32)
            .write_volatile(u32::from_ne_bytes([proto, 0, 0, 0]));
    }
}

/// Zeroes the `T` at `p`, four bytes at a time.
///
/// # Safety
/// `p` must be valid for writes and 4-byte aligned; all-zero must be a valid `T`.
#[inline(always)]
pub unsafe fn zero<T>(p: *mut T) {
    const { assert!(core::mem::size_of::<T>() % 4 == 0) };
    let w = p as *mut u32;
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 4 {
        // SAFETY: the caller's; within the `T`.
        unsafe { w.add(i).write_volatile(0) };
        i += 1;
    }
}

/// True when the addresses at `a` and `b` are equal, compared four bytes at a time.
///
/// # Safety
/// Both must be valid and 4-byte aligned.
#[inline(always)]
pub unsafe fn addr_eq(a: *const Addr, b: *const Addr) -> bool {
    let (a, b) = (a as *const u32, b as *const u32);
    // SAFETY: the caller's.
    unsafe {
        (a.read() ^ b.read())
            | (a.add(1).read() ^ b.add(1).read())
            | (a.add(2).read() ^ b.add(2).read())
            | (a.add(3).read() ^ b.add(3).read())
            == 0
    }
}

/// True when the address at `a` is all zeros (unset), read four bytes at a time.
///
/// # Safety
/// `a` must be valid and 4-byte aligned.
#[inline(always)]
pub unsafe fn is_zero_addr(a: *const Addr) -> bool {
    let p = a as *const u32;
    // SAFETY: the caller's.
    unsafe { (p.read() | p.add(1).read() | p.add(2).read() | p.add(3).read()) == 0 }
}

/// `abi::lb::is_v4_mapped` four bytes at a time.
///
/// # Safety
/// `a` must be valid and 4-byte aligned.
#[inline(always)]
pub unsafe fn is_v4_mapped(a: *const Addr) -> bool {
    let p = a as *const u32;
    // SAFETY: the caller's.
    unsafe { (p.read() | p.add(1).read()) == 0 && p.add(2).read() == V4_MAPPED_WORD }
}
