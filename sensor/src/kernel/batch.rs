//! Reading a whole hash map in a few system calls: `BPF_MAP_LOOKUP_BATCH` (Linux 5.6).
//!
//! aya 0.14 walks a map with one `BPF_MAP_GET_NEXT_KEY` and one `BPF_MAP_LOOKUP_ELEM` per
//! key (and, per CPU, a fresh vector per value): 200,000 system calls a poll for 100,000
//! flows. A batch returns up to [`BATCH`] keys and values per call. A kernel without batch
//! support answers `EINVAL`; the caller then falls back to aya's walk.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
};

use aya::Pod;

/// Keys per call. A hash map's batch never splits a bucket, so this must exceed the longest
/// bucket (a handful, for maps that are not full of collisions); `ENOSPC` doubles it.
const BATCH: usize = 4_096;

/// `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `union bpf_attr`'s `batch` member.
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

/// The map's file descriptor, for a map aya loaded.
pub fn map_fd(map: &aya::maps::Map) -> Option<BorrowedFd<'_>> {
    use aya::maps::Map;
    match map {
        Map::HashMap(data) | Map::PerCpuHashMap(data) => Some(data.fd().as_fd()),
        _ => None,
    }
}

/// Every entry of a hash map whose values are `slots` consecutive `V`s, each padded to 8
/// bytes (1 for a plain hash; the number of possible CPUs for a per-CPU one), folded into one
/// `V` each by `fold`.
pub fn lookup_all<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    slots: usize,
    fold: impl Fn(&[V]) -> V,
) -> io::Result<Vec<(K, V)>> {
    let stride = std::mem::size_of::<V>().next_multiple_of(8);
    if stride != std::mem::size_of::<V>() {
        // Values of sizes that need padding per CPU are not read in batches here.
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut entries = Vec::new();
    let mut batch = BATCH;
    // The kernel's opaque position: for a hash map, a bucket index.
    let mut token = 0u64;
    let mut first = true;
    // SAFETY: K and V are plain old data; all-zero is a valid value of each.
    let (zero_key, zero_value): (K, V) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // Buffers for one batch, reused by the next.
    let mut keys: Vec<K> = Vec::new();
    let mut values: Vec<V> = Vec::new();
    loop {
        keys.resize(batch, zero_key);
        values.resize(batch * slots, zero_value);
        let mut next = 0u64;
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::from_mut(&mut token) as u64
            },
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(batch).unwrap_or(u32::MAX),
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the attribute points at buffers of `batch` keys and `batch * slots` values
        // and at two u64 tokens, all alive for the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::from_mut(&mut attr),
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let error = (ret < 0).then(io::Error::last_os_error);
        match error.as_ref().and_then(io::Error::raw_os_error) {
            Some(libc::ENOSPC) if attr.count == 0 => {
                // One bucket holds more keys than a batch: ask for more at once.
                batch *= 2;
                continue;
            }
            None | Some(libc::ENOENT) => {}
            Some(_) => return Err(error.unwrap_or_else(io::Error::last_os_error)),
        }
        let filled = attr.count as usize;
        for (key, values) in keys.iter().zip(values.chunks_exact(slots)).take(filled) {
            entries.push((*key, fold(values)));
        }
        if error.is_some() {
            return Ok(entries); // ENOENT: past the last bucket
        }
        token = next;
        first = false;
    }
}
