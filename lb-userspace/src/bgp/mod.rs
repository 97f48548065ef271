//! What BIRD announces for this instance (docs/scale-out.md, "Routes").
//!
//! `lb` never speaks BGP itself: BIRD runs beside it, and `lb` decides which routes BIRD
//! announces. [`routes`] computes the wanted set from the instance's state and renders
//! it as BIRD static protocols; [`reply`] reads BIRD's control-socket replies;
//! [`control`] talks to the socket; [`announcer`] is the daemon task that writes the
//! file and asks BIRD to reload it whenever the wanted set changes.

pub mod announcer;
pub mod control;
pub mod reply;
pub mod routes;

pub use announcer::{Announcer, AnnouncerStatus};
pub use routes::{RouteInputs, RouteSet, desired_routes};
