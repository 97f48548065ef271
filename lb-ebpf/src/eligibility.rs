//! Authorization of new flows (the eligibility table, docs/architecture.md): a service
//! that requires it admits only clients inside its allow-list; others are dropped or,
//! for TCP, answered with a RST.

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{EligibilityKey, SERVICE_FLAG_AUTH_REQUIRED, Service};

use crate::maps::ELIGIBILITY;

/// Whether `client` (network byte order) may open a new flow to `service`.
#[inline(always)]
pub fn allowed(service: &Service, client: u32) -> bool {
    if service.flags & SERVICE_FLAG_AUTH_REQUIRED == 0 {
        return true;
    }
    let key = Key::new(
        64,
        EligibilityKey {
            service_id_be: service.id.to_be(),
            addr: client,
        },
    );
    ELIGIBILITY.get(&key).is_some()
}
