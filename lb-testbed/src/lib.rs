//! Test fixtures shared by the integration tests (package `lb-integration`), the
//! data-plane tests, `cargo xtask demo` and `cargo xtask bench`.
//!
//! Why a crate of its own: the same namespace fixture, testbed and `BPF_PROG_TEST_RUN`
//! harness serve three users that must not drift apart (tests, demo, bench). xtask is
//! a tool, not a library to test against, and lb-userspace cannot host them because
//! they depend on lb-userspace. Dependencies run one way:
//! `lb-integration`, `xtask` → `lb-testbed` → `lb-userspace`.
//!
//! - [`netns`]: the one network-namespace fixture ([`Netns`]): create, wire with `ip`,
//!   sysctls, run a closure inside, delete on drop; [`run_in_netns`].
//! - [`topology`]: the client → LB → three servers testbed ([`Topology`]) built on it.
//! - [`harness`]: the production XDP program loaded and programmed from a config, run
//!   with `BPF_PROG_TEST_RUN` ([`Harness`]), in a namespace from [`harness_netns`].
//! - [`packet`]: frames built and parsed with etherparse for the harness.
//! - [`daemon`]: `lb run` on a topology, its CLI, waiting until it answers.
//! - [`scaleout`]: balancer instances behind ECMP routers that learn the routes from
//!   each instance's BIRD (docs/scale-out.md), [`scaleout::ScaleOut`].
//! - [`peers`]: namespaces for several `lb run` instances as peers ([`peers::PeerNet`]).
//! - [`flood`]: a second client namespace sending a spoofed SYN flood ([`flood::Flooder`]).
//! - Traffic helpers, one module each: [`http_server`] (the test servers' HTTP side),
//!   [`http_client`], [`udp`], [`payload`].
//!
//! Everything that needs root (namespaces, BPF) says so; the pure parts (HTTP parsing,
//! payload, packet layout) are unit-tested without it.

use std::sync::{Mutex, MutexGuard};

pub mod daemon;
pub mod flood;
pub mod harness;
pub mod http_client;
pub mod http_server;
pub mod netns;
pub mod packet;
pub mod payload;
pub mod peers;
mod process;
pub mod scaleout;
mod server;
pub mod topology;
pub mod udp;
pub mod workload;

pub use harness::{Harness, harness_netns};
pub use http_client::{HttpResponse, KeepAliveClient, count_by_server, http_get, server_of};
pub use netns::{Netns, list_netns, run_in_netns, spawn_in_netns};
pub use payload::{Payload, payload_bytes, payload_sha256, sha256_hex};
pub use server::ServerStats;
pub use topology::*;
pub use udp::{udp_reply, udp_request};

/// Locks even a poisoned mutex: teardown must work after a test panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
