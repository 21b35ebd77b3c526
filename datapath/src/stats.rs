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

/// Counts a step of the packet under reason `r` (a trace point when those are on).
#[inline(always)]
pub fn reason(r: u32, bytes: u64) {
    add(OXI_STATS.get_ptr_mut(r), bytes);
    crate::events::trace(abi::event::SET_LB, r);
}

/// Counts a dropped packet under reason `r` and reports the drop (crate::events).
#[inline(always)]
pub fn drop(r: u32, bytes: u64) {
    reason(r, bytes);
    crate::events::drop(abi::event::SET_LB, r);
}

#[inline(always)]
pub fn service(id: u32, bytes: u64) {
    add(OXI_SERVICE_STATS.get_ptr_mut(id), bytes);
}

#[inline(always)]
pub fn backend(id: u32, bytes: u64) {
    add(OXI_BACKEND_STATS.get_ptr_mut(id), bytes);
}
