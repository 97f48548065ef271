//! Builds the XDP program (`lb-ebpf`) for `bpfel-unknown-none` and places the object in
//! OUT_DIR, where `src/ebpf.rs` embeds it.
//!
//! The eBPF build needs the nightly toolchain with rust-src and bpf-linker
//! (`cargo xtask setup` installs them). Without them the controller still compiles,
//! with an empty object, so plain `cargo build`/`cargo test` work on any machine; the
//! `lb run` then refuses to start and says how to fix it.
//!
//! This is a plain `cargo build` inside lb-ebpf/ rather than `aya-build`: aya-build builds a
//! member of the host workspace, and lb-ebpf stays out of it so that its profile (LTO,
//! panic = abort) and target never apply to the host crates; it also has no way to fall back
//! to an empty object when bpf-linker is missing. How the object is compiled (target,
//! build-std, rustflags) is set once, in lb-ebpf/.cargo/config.toml.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().expect("workspace root");
    let ebpf_dir = workspace.join("lb-ebpf");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let object = out_dir.join("lb-xdp.o");
    let bench_object = out_dir.join("lb-bench.o");

    for path in [
        "lb-ebpf/src",
        "lb-ebpf/Cargo.toml",
        "lb-ebpf/.cargo/config.toml",
        "lb-common/src",
        "lb-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
    }
    println!("cargo:rerun-if-env-changed=LB_SKIP_EBPF_BUILD");

    // Watch the linker's install location: while it is missing the path does not exist,
    // which makes cargo re-run this script on every build, so the first build after
    // `cargo xtask setup` installs bpf-linker embeds the real object.
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    if let Some(cargo_home) = cargo_home {
        println!(
            "cargo:rerun-if-changed={}",
            cargo_home.join("bin/bpf-linker").display()
        );
    }

    let skip = env::var_os("LB_SKIP_EBPF_BUILD").is_some_and(|v| v == "1");
    if skip || !have_bpf_linker() {
        println!(
            "cargo:warning=XDP program not built (bpf-linker missing or LB_SKIP_EBPF_BUILD=1): run `cargo xtask setup`"
        );
        std::fs::write(&object, b"").expect("write placeholder object");
        std::fs::write(&bench_object, b"").expect("write placeholder object");
        return;
    }

    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.current_dir(&ebpf_dir)
        .args(["run", "nightly", "cargo", "build", "--release"])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer cargo's settings describe the host build, not this one; its encoded
    // rustflags would also override lb-ebpf/.cargo/config.toml's.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTUP_TOOLCHAIN",
    ] {
        cmd.env_remove(key);
    }
    let status = cmd.status().expect("spawn rustup to build lb-ebpf");
    assert!(
        status.success(),
        "building the XDP program failed: {status}"
    );
    let built = target_dir.join("bpfel-unknown-none/release/lb-xdp");
    copy(&built, &object);
    copy(
        &target_dir.join("bpfel-unknown-none/release/lb-bench"),
        &bench_object,
    );
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}

fn have_bpf_linker() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
