//! Tests of parsing and validation. Expected error lines are found in the test's own text
//! (the line holding a marker), so editing a template does not break unrelated tests.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::domain::{DEFAULT_CLUSTER_PORT, DEFAULT_DEAD_AFTER, DEFAULT_HEARTBEAT_MS, HealthProbe};

mod bgp;
mod cluster;
mod instance;
mod limits;
mod parsing;
mod peers;
mod services;
mod syntax;

const PATH: &str = "/etc/lb/test.toml";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(PATH))
}

/// 1-based line of the first occurrence of `marker` in `text`.
#[track_caller]
fn first_line_of(text: &str, marker: &str) -> usize {
    line_of_match(text, text.find(marker), marker)
}

/// 1-based line of the last occurrence of `marker` in `text`.
#[track_caller]
fn last_line_of(text: &str, marker: &str) -> usize {
    line_of_match(text, text.rfind(marker), marker)
}

#[track_caller]
fn line_of_match(text: &str, offset: Option<usize>, marker: &str) -> usize {
    let offset = offset.unwrap_or_else(|| panic!("{marker:?} is not in the test's text"));
    position(text, offset).line
}

/// Asserts that `text` is refused on the line of the last occurrence of `marker` (where
/// a value clashes with an earlier one, the later one is refused) with a message
/// containing `needle`.
#[track_caller]
fn assert_refused(text: &str, marker: &str, needle: &str) -> ConfigError {
    assert_refused_on(text, last_line_of(text, marker), needle)
}

/// Asserts that `text` is refused on `line` with a message containing `needle`.
#[track_caller]
fn assert_refused_on(text: &str, line: usize, needle: &str) -> ConfigError {
    let error = parse(text).expect_err("the configuration should be refused");
    assert_eq!(error.path, Path::new(PATH));
    assert_eq!(error.line, line, "wrong line in: {error}");
    assert!(
        error.message.contains(needle),
        "expected {needle:?} in: {error}"
    );
    error
}

/// A valid file to derive refusals from, with `lines` appended after the service's
/// one backend (its keys, or further tables).
fn with_service(lines: &str) -> String {
    format!(
        r#"[interfaces]
attach = ["lb-ext"]

[[service]]
name = "web"
vip = "198.18.1.10"
port = 80
snat_ip = "198.19.1.1"

[[service.backend]]
address = "198.19.0.11"
{lines}"#
    )
}

/// Asserts that `key`, among the service's own keys, is refused on its line with a
/// message containing `needle`.
#[track_caller]
fn assert_key_refused(key: &str, needle: &str) -> ConfigError {
    assert_refused(&with_service_keys(key), key, needle)
}

/// A valid file with `lines` among the service's own keys.
fn with_service_keys(lines: &str) -> String {
    with_service("").replacen(
        "snat_ip = \"198.19.1.1\"\n",
        &format!("snat_ip = \"198.19.1.1\"\n{lines}\n"),
        1,
    )
}

#[test]
fn markers_find_their_lines() {
    let text = "a\nb = 1\nc\nb = 1\n";
    assert_eq!(first_line_of(text, "b = 1"), 2);
    assert_eq!(last_line_of(text, "b = 1"), 4);
    let keys = with_service_keys("deny = \"reset\"");
    assert_eq!(
        last_line_of(&keys, "deny"),
        first_line_of(&keys, "snat_ip") + 1
    );
}
