//! Per-CPU counters: per reason, per service, per backend.
use crate::maps::{OXI_BACKEND_STATS, OXI_SERVICE_STATS, OXI_STATS};

#[inline(always)]
fn add(c: Option<*mut abi::lb::Counter>, bytes: u64) {
    if let Some(c) = c {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn reason(r: u32, bytes: u64) {
    add(OXI_STATS.get_ptr_mut(r), bytes);
}

#[inline(always)]
pub fn service(id: u32, bytes: u64) {
    add(OXI_SERVICE_STATS.get_ptr_mut(id), bytes);
}

#[inline(always)]
pub fn backend(id: u32, bytes: u64) {
    add(OXI_BACKEND_STATS.get_ptr_mut(id), bytes);
}
