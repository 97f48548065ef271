//! The XDP object built by `build.rs`, embedded in the binary.

use anyhow::{Result, bail};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp.o"));

static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-bench.o"));

/// The ELF object of the XDP program.
pub fn object() -> Result<&'static [u8]> {
    if OBJECT.is_empty() {
        bail!(
            "this build of lb has no XDP program (bpf-linker or the nightly toolchain was \
             missing when it was compiled): run `cargo xtask setup`, then rebuild"
        );
    }
    Ok(OBJECT)
}

/// The ELF object of the benchmark helpers (`lb-ebpf/src/bench.rs`): wrapper and floor
/// programs used by `cargo xtask bench`, never by `lb run`.
pub fn bench_object() -> Result<&'static [u8]> {
    if BENCH_OBJECT.is_empty() {
        bail!("this build of lb has no benchmark object: run `cargo xtask setup`, then rebuild");
    }
    Ok(BENCH_OBJECT)
}
