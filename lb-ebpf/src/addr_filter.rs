//! The address pre-filter (docs/architecture.md, "Address filter"): one bit per hashed
//! address, set by the controller for every VIP, SNAT address and backend (and the
//! addresses of flows still alive after a reload). A packet whose source and
//! destination bits are both clear cannot hit a flow entry nor be for a local address,
//! so it passes without the `FLOWS` and `LOCAL_ADDRS` lookups.

use crate::maps::ADDR_FILTER;

/// Whether a packet from `saddr` to `daddr` (network byte order) may be the balancer's:
/// forward and SNAT-reverse keys have a VIP or SNAT destination, every reverse key a
/// backend source.
#[inline(always)]
pub fn may_be_ours(saddr: u32, daddr: u32) -> bool {
    match ADDR_FILTER.get(0) {
        Some(filter) => filter.contains(daddr) || filter.contains(saddr),
        // Never happens (an array of one); a miss would only cost the lookups.
        None => true,
    }
}
