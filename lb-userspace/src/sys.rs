//! Small system facts: interface indexes, the clock the data path stamps flows with,
//! whether bpffs is mounted.

use std::ffi::CString;

use anyhow::{Result, bail};

/// Index of interface `name`, or a clear error if it does not exist.
pub fn ifindex(name: &str) -> Result<u32> {
    let Ok(c_name) = CString::new(name) else {
        bail!("invalid interface name {name:?}");
    };
    // SAFETY: valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        bail!("interface {name} does not exist");
    }
    Ok(index)
}

pub fn interface_exists(name: &str) -> bool {
    ifindex(name).is_ok()
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, which stamps
/// flow entries.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Where bpffs is mounted; the daemon pins its maps and links under it.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Whether this mount namespace has bpffs on [`BPFFS`].
pub fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| bpffs_listed(&mounts))
}

/// Whether `mounts` (the text of `/proc/self/mounts`) lists bpffs on [`BPFFS`].
pub fn bpffs_listed(mounts: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let _device = fields.next();
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    })
}

pub fn is_root() -> bool {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpffs_detection() {
        let yes = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,nosuid 0 0\n";
        let no = "sysfs /sys sysfs rw 0 0\ntmpfs /sys/fs/bpf tmpfs rw 0 0\n";
        assert!(bpffs_listed(yes));
        assert!(!bpffs_listed(no));
        assert!(!bpffs_listed(""));
    }
}
