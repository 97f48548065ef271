//! Flow sharing between balancer instances (docs/scale-out.md, "Peers").

pub mod activity;
pub mod events;
pub mod install;
pub mod io;
pub mod membership;
pub mod moves;
pub mod record;
pub mod wire;
