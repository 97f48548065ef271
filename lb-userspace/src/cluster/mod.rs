//! Cluster protocol: nodes announce
//! themselves and report health and load; the router answers and balances over them.
//! See `docs/cluster-protocol.md`, and `docs/architecture.md` for where it fits.

pub mod agent;
pub mod allotment;
pub mod backends;
pub mod frame;
pub mod io;
pub mod router;
pub mod wire;
