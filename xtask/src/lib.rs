//! Developer tasks for the XDP load balancer workspace: toolchain setup and the
//! benchmarks. The netns testbed they run on is the `lb-testbed` crate.

pub mod bench;
pub mod lint;
pub mod setup;
