//! `cargo xtask lint`: rustfmt and clippy over every crate, warnings as errors.
//!
//! The host workspace is checked from the root. lb-ebpf is not a workspace member (it
//! builds for the BPF target with its own toolchain and profile), so it is checked from
//! its own directory, where its rust-toolchain.toml and .cargo/config.toml make clippy
//! see exactly what the real build compiles.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::setup;

/// Where clippy's BPF-target artifacts go, apart from the build script's copy.
const EBPF_LINT_TARGET_DIR: &str = "target/lint-ebpf";

/// Runs every check, reporting all failures before failing.
pub fn run(root: &Path) -> Result<()> {
    let ebpf = root.join("lb-ebpf");
    let ebpf_target_dir = root.join(EBPF_LINT_TARGET_DIR);
    let checks: [(&str, Command); 4] = [
        ("rustfmt (workspace)", {
            let mut cmd = Command::new(setup::cargo());
            cmd.current_dir(root).args(["fmt", "--all", "--check"]);
            cmd
        }),
        ("clippy (workspace)", {
            let mut cmd = Command::new(setup::cargo());
            cmd.current_dir(root).args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]);
            cmd
        }),
        ("rustfmt (lb-ebpf)", {
            let mut cmd = nightly_cargo(&ebpf);
            cmd.args(["fmt", "--check"]);
            cmd
        }),
        ("clippy (lb-ebpf, bpfel-unknown-none)", {
            let mut cmd = nightly_cargo(&ebpf);
            cmd.args(["clippy", "--release", "--target-dir"])
                .arg(&ebpf_target_dir)
                .args(["--", "-D", "warnings"]);
            cmd
        }),
    ];
    let mut failed = Vec::new();
    for (name, mut cmd) in checks {
        println!("xtask lint: {name}");
        let status = cmd
            .status()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        if !status.success() {
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    println!("xtask lint: clean");
    Ok(())
}

/// `cargo` of the nightly toolchain in `dir`. Host-target flags from the caller's
/// environment would override lb-ebpf/.cargo/config.toml, so they are dropped.
fn nightly_cargo(dir: &Path) -> Command {
    let mut cmd = Command::new(setup::tool_path("rustup"));
    cmd.current_dir(dir).args(["run", "nightly", "cargo"]);
    for key in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET"] {
        cmd.env_remove(key);
    }
    cmd
}
