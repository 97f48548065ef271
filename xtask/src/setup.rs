//! `cargo xtask setup`: install whatever the build, the testbed and the demo
//! need, and nothing that is already there.
//!
//! Every check is cheap (dpkg-query, rustup listings, `bpf-linker --version`,
//! /proc/mounts), so on a provisioned machine this finishes in well under a
//! second and can be run unconditionally by `demo`, `test` and CI.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use lb_userspace::sys::{self, BPFFS};

/// Debian packages: LLVM 22 (+ Polly, zstd, zlib, which its static libraries
/// link against) for building bpf-linker, and the tools the testbed, the
/// demo, the tests and the benchmarks drive.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "ethtool",
    "nftables",
    "iperf3",
    "wrk",
    "curl",
    "socat",
    "netsniff-ng",
    "bpftool",
    "iputils-ping",
    "traceroute",
    "nginx-light",
    // A real DNS server and client for the fragment tests (tests/tests/fragments.rs);
    // dnsmasq-base brings no system service.
    "dnsmasq-base",
    "bind9-dnsutils",
    // BIRD 2 for the scale-out tests (tests/tests/bgp_cluster.rs): the tests run `bird`
    // by hand in each namespace with its own config, control socket and pid file, so
    // the package's system service is never needed (policy-rc.d or not, a running one
    // talks to nobody: it has no BGP neighbours in the default config).
    "bird2",
];

/// Where Debian's LLVM 22 lives; bpf-linker's build script finds it through
/// `LLVM_PREFIX`.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Run the whole setup. Idempotent.
pub fn run() -> Result<()> {
    let started = Instant::now();
    require_root("cargo xtask setup")?;

    let mut changed = false;
    changed |= ensure_debian_packages()?;
    changed |= ensure_nightly_toolchain()?;
    changed |= ensure_bpf_linker()?;
    changed |= ensure_bpffs()?;

    let took = started.elapsed().as_secs_f64();
    if changed {
        println!("setup: done in {took:.1}s");
    } else {
        println!("setup: everything already present ({took:.2}s)");
    }
    Ok(())
}

/// Fail with a clear message unless we run as root (netns, XDP, apt and
/// bpffs all need it).
pub fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "{what} must run as root (effective uid is {euid}): it installs packages, \
             creates network namespaces and attaches XDP programs; try `sudo -E cargo xtask ...`"
        );
    }
    Ok(())
}

fn ensure_debian_packages() -> Result<bool> {
    let mut missing = Vec::new();
    for pkg in DEBIAN_PACKAGES {
        if !dpkg_installed(pkg)? {
            missing.push(*pkg);
        }
    }
    if missing.is_empty() {
        return Ok(false);
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    // One update, only when something is actually missing: the package
    // lists may be absent or stale on a fresh machine.
    run_cmd(Command::new("apt-get").arg("update"))?;
    run_cmd(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )?;
    // Catch a package that apt "installed" under another name or skipped.
    let still: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p).unwrap_or(false))
        .collect();
    if !still.is_empty() {
        bail!(
            "apt-get finished but these packages are still not installed: {}",
            still.join(" ")
        );
    }
    Ok(true)
}

/// True if dpkg reports the package as fully installed. An unknown package
/// makes dpkg-query exit non-zero, which simply means "missing".
fn dpkg_installed(pkg: &str) -> Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .context("running dpkg-query (is this a Debian system?)")?;
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed")
}

/// Components of the nightly toolchain: rust-src for `-Z build-std` of the XDP program,
/// clippy and rustfmt for `cargo xtask lint` of lb-ebpf.
const NIGHTLY_COMPONENTS: [&str; 3] = ["rust-src", "clippy", "rustfmt"];

fn ensure_nightly_toolchain() -> Result<bool> {
    let rustup = tool_path("rustup");
    let list = capture(Command::new(&rustup).args(["toolchain", "list"]))
        .context("listing rustup toolchains (is rustup installed?)")?;
    if !has_plain_nightly(&list) {
        println!("setup: installing the nightly toolchain with {NIGHTLY_COMPONENTS:?}");
        let mut cmd = Command::new(&rustup);
        cmd.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
        for component in NIGHTLY_COMPONENTS {
            cmd.args(["--component", component]);
        }
        run_cmd(&mut cmd)?;
        return Ok(true);
    }
    let installed = capture(Command::new(&rustup).args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    let missing = missing_components(&installed);
    if missing.is_empty() {
        return Ok(false);
    }
    println!("setup: adding {missing:?} to the nightly toolchain");
    run_cmd(
        Command::new(&rustup)
            .args(["component", "add", "--toolchain", "nightly"])
            .args(&missing),
    )?;
    Ok(true)
}

/// Which of `NIGHTLY_COMPONENTS` a `rustup component list --installed` output lacks
/// (it names them with the host triple, except rust-src).
fn missing_components(installed: &str) -> Vec<&'static str> {
    NIGHTLY_COMPONENTS
        .into_iter()
        .filter(|component| {
            !installed.lines().any(|line| {
                let line = line.trim();
                line == *component
                    || line
                        .strip_prefix(component)
                        .is_some_and(|rest| rest.starts_with('-'))
            })
        })
        .collect()
}

/// `cargo +nightly` resolves to the undated `nightly-<host>` toolchain; a
/// dated one such as `nightly-2025-01-01-<host>` does not count.
fn has_plain_nightly(toolchain_list: &str) -> bool {
    toolchain_list.lines().any(|line| {
        let name = line.split_whitespace().next().unwrap_or("");
        match name.strip_prefix("nightly") {
            Some("") => true,
            Some(rest) => rest
                .strip_prefix('-')
                .is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit())),
            None => false,
        }
    })
}

fn ensure_bpf_linker() -> Result<bool> {
    let works = |program: &std::ffi::OsStr| {
        Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works("bpf-linker".as_ref())
        || cargo_home_bin("bpf-linker").is_some_and(|p| works(p.as_os_str()))
    {
        return Ok(false);
    }
    println!("setup: building bpf-linker against LLVM 22 (takes several minutes)");
    run_cmd(Command::new(cargo()).env("LLVM_PREFIX", LLVM_PREFIX).args([
        "install",
        "bpf-linker",
        "--locked",
        "--no-default-features",
        "--features",
        "llvm-22",
    ]))?;
    Ok(true)
}

fn ensure_bpffs() -> Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if sys::bpffs_listed(&mounts) {
        return Ok(false);
    }
    println!("setup: mounting bpffs on {BPFFS}");
    std::fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    Ok(true)
}

/// The cargo that runs us (so nested builds use the same toolchain), else
/// whatever `cargo` is on PATH.
pub fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn cargo_home_bin(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let path = home.join("bin").join(name);
    path.is_file().then_some(path)
}

/// A rustup-managed tool: from PATH if it is there, else from ~/.cargo/bin
/// (CI shells do not always source ~/.cargo/env).
pub fn tool_path(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()));
    if on_path {
        return PathBuf::from(name);
    }
    cargo_home_bin(name).unwrap_or_else(|| PathBuf::from(name))
}

/// Run with inherited stdio (the user sees apt/cargo progress); error on failure.
fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

fn capture(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nightly_components_detection() {
        let all = "clippy-x86_64-unknown-linux-gnu\nrust-src\nrustfmt-x86_64-unknown-linux-gnu\n";
        assert!(missing_components(all).is_empty());
        assert_eq!(
            missing_components("rust-src\nrustc-x86_64-unknown-linux-gnu\n"),
            ["clippy", "rustfmt"]
        );
        // rust-std is not rust-src.
        assert_eq!(
            missing_components("rust-std-x86_64-unknown-linux-gnu\n"),
            NIGHTLY_COMPONENTS
        );
    }

    #[test]
    fn nightly_detection() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n";
        assert!(has_plain_nightly(list));
        assert!(has_plain_nightly("nightly\n"));
        let dated = "stable-x86_64-unknown-linux-gnu (default)\n\
                     nightly-2025-01-01-x86_64-unknown-linux-gnu\n";
        assert!(!has_plain_nightly(dated));
        assert!(!has_plain_nightly("1.95.0-x86_64-unknown-linux-gnu\n"));
    }
}
