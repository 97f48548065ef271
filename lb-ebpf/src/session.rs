//! Client-IP session affinity (the session table, docs/architecture.md): while a client's session
//! lives and its backend is active, every new connection of that client goes there;
//! otherwise the Maglev pick is taken and becomes (or re-pins) the session.

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{
    BACKEND_STATE_ACTIVE, Backend, FlowKey, SERVICE_FLAG_AFFINITY, Service, SessionEntry,
    SessionKey, counters,
};

use crate::{
    maps::{BACKENDS, SESSIONS},
    sched,
    stats::count,
};

/// The backend for a new flow of `key` to `service` at time `now`.
#[inline(always)]
pub fn pick_backend(service: &Service, key: &FlowKey, now: u64) -> Option<(u32, Backend)> {
    if service.flags & SERVICE_FLAG_AFFINITY == 0 {
        return sched::pick_backend(service, key);
    }
    let session_key = SessionKey {
        service_id: service.id,
        client_ip: key.src_ip,
    };
    let timeout_ns = u64::from(service.session_timeout_s) * 1_000_000_000;
    if let Some(session) = SESSIONS.get_ptr_mut(session_key) {
        // SAFETY: map value valid for this run.
        let (backend_id, last_seen) = unsafe { ((*session).backend_id, (*session).last_seen_ns) };
        if now.saturating_sub(last_seen) <= timeout_ns {
            if let Some(backend) = BACKENDS.get(backend_id)
                && backend.ip != 0
                && backend.state == BACKEND_STATE_ACTIVE
            {
                // SAFETY: map value valid for this run; a racing writer only moves it forward.
                unsafe { (*session).last_seen_ns = now };
                count(counters::SESSION_HITS);
                return Some((backend_id, *backend));
            }
            count(counters::SESSION_REPINNED);
        }
    }
    let (backend_id, backend) = sched::pick_backend(service, key)?;
    let session = SessionEntry {
        backend_id,
        _pad: 0,
        created_ns: now,
        last_seen_ns: now,
    };
    // A full table evicts the least recently used session; the flow goes on regardless.
    let _ = SESSIONS.insert(session_key, session, u64::from(BPF_ANY));
    Some((backend_id, backend))
}
