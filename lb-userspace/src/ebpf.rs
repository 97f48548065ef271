//! The XDP object built by `build.rs`, embedded in the binary.

use anyhow::{Result, bail};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp.o"));

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
