//! Cluster protocol (seed 000 figs 7-9, seed 004 figs 13 and 18): nodes announce
//! themselves and report health and load; the router answers and balances over them.
//! See `docs/cluster-protocol.md`.

pub mod agent;
pub mod allotment;
pub mod backends;
pub mod io;
pub mod router;
pub mod wire;
