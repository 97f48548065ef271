//! Developer tasks for the XDP load balancer workspace. The library part is
//! shared with the integration tests (`lb-integration`) and benchmarks.

pub mod bench;
pub mod lint;
pub mod setup;
pub mod testbed;
