//! Whole-map reads with `BPF_MAP_LOOKUP_BATCH`: thousands of entries per syscall instead
//! of two syscalls (next key, lookup) per entry. The GC reads FLOWS every second, and at
//! millions of flows the per-entry walk alone kept a core busy (docs/architecture.md,
//! "Flow table and garbage collection").

use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::MapData;

/// `enum bpf_cmd`: BPF_MAP_LOOKUP_BATCH, BPF_MAP_UPDATE_BATCH.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// Entries asked for per syscall: large enough that a million-entry table takes a few
/// hundred calls, small enough that the buffers stay modest.
pub const BATCH_ENTRIES: u32 = 16_384;

/// `union bpf_attr`, the `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every (key, value) of a hash map (plain or LRU, not per-CPU). Like any walk of a map
/// that the data path changes meanwhile, an entry added or removed during the read may
/// be missed; none is torn.
/// `chunk` entries are asked for per syscall (more when one hash bucket holds more).
pub fn lookup_all<K: aya::Pod + Default, V: aya::Pod + Default>(
    map: &MapData,
    chunk: u32,
) -> io::Result<Vec<(K, V)>> {
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    let mut entries = Vec::new();
    // The hash table's batch token is a bucket index (u32); a token buffer of the key's
    // size is what the kernel documents, so both sizes are covered.
    let mut token = [0u8; 64];
    let mut next = [0u8; 64];
    let mut chunk = chunk.max(1) as usize;
    let mut first = true;
    loop {
        let mut keys = vec![K::default(); chunk];
        let mut values = vec![V::default(); chunk];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers of `count` keys and values of the map's key
        // and value types, and at token buffers larger than any batch token.
        let rc = unsafe { bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let error = (rc < 0).then(io::Error::last_os_error);
        match error.as_ref().and_then(io::Error::raw_os_error) {
            // A bucket holds more entries than were asked for: ask for more.
            Some(libc::ENOSPC) if attr.count == 0 => {
                chunk *= 2;
                continue;
            }
            Some(libc::ENOENT) | None => {}
            _ => return Err(error.unwrap_or_else(|| io::Error::other("batch lookup"))),
        }
        let got = attr.count as usize;
        keys.truncate(got);
        values.truncate(got);
        entries.extend(keys.into_iter().zip(values));
        if error.is_some() {
            // ENOENT: the walk reached the end.
            return Ok(entries);
        }
        token = next;
        first = false;
    }
}

/// Writes `entries` into a hash map (`BPF_ANY`), `chunk` a syscall: how a large table is
/// filled (the bench fills millions of flows this way).
pub fn update_all<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    entries: &[(K, V)],
    chunk: usize,
) -> io::Result<()> {
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    for part in entries.chunks(chunk.max(1)) {
        let keys: Vec<K> = part.iter().map(|(k, _)| *k).collect();
        let values: Vec<V> = part.iter().map(|(_, v)| *v).collect();
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: part.len() as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at `count` keys and values of the map's types.
        if unsafe { bpf_batch(BPF_MAP_UPDATE_BATCH, &mut attr) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if attr.count as usize != part.len() {
            return Err(io::Error::other(format!(
                "batch update wrote {} of {} entries",
                attr.count,
                part.len()
            )));
        }
    }
    Ok(())
}

/// The bpf(2) syscall with a batch command.
///
/// # Safety
/// The pointers in `attr` must be valid for the command, the map's key and value sizes
/// and `attr.count` entries.
unsafe fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> libc::c_long {
    // SAFETY: as the caller guarantees.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    }
}
