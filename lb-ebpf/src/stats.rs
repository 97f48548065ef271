//! Per-CPU counters: no atomics needed, the controller sums the CPUs.

use crate::maps::{BACKEND_STATS, GLOBAL_COUNTERS, SERVICE_STATS};

#[inline(always)]
pub fn count(counter: u32) {
    if let Some(value) = GLOBAL_COUNTERS.get_ptr_mut(counter) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *value += 1 };
    }
}

/// Accounts a forwarded packet to its service and backend.
#[inline(always)]
pub fn account(service_id: u32, backend_id: u32, bytes: u64) {
    if let Some(stats) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes;
        }
    }
    if let Some(stats) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn account_new_flow(service_id: u32, backend_id: u32) {
    if let Some(stats) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*stats).new_flows += 1 };
    }
    if let Some(stats) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*stats).new_flows += 1 };
    }
}

#[inline(always)]
pub fn account_service_drop(service_id: u32) {
    if let Some(stats) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*stats).drops += 1 };
    }
}

/// A new flow refused by the service's allow-list (a drop of the service as well).
#[inline(always)]
pub fn account_service_denied(service_id: u32) {
    if let Some(stats) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*stats).drops += 1;
            (*stats).denied += 1;
        }
    }
}

/// A SYN of the service answered with a SYN cookie.
#[inline(always)]
pub fn account_service_cookie(service_id: u32) {
    if let Some(stats) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*stats).syn_cookies += 1 };
    }
}
