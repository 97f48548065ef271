//! Controller library of the load balancer: config, map programming, daemon, API.
//! The `lb` binary (src/main.rs) is a thin CLI over it; the data-plane tests use it to
//! load and program the XDP program exactly as the daemon does.

// A long-running daemon must not die on a broken invariant it could report instead: every
// remaining `unwrap`/`expect` outside tests is an explicit `#[expect]` with its reason.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod api;
pub mod bgp;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod domain;
pub mod ebpf;
pub mod flows;
pub mod health;
pub mod maglev;
pub mod metrics;
pub mod output;
pub mod peers;
pub mod services;
pub mod syn_cookies;
pub mod sync;
pub mod sys;
