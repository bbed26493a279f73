//! File writes: bytes each process writes to each file, through the page cache.
//!
//! ext4 (fs/ext4/inode.c): `ext4_da_write_end`, `ext4_write_end` and
//! `ext4_journalled_write_end(struct inode *inode, loff_t pos, unsigned int len, unsigned
//! int copied)` fire in the filesystem's `write_end`, which `generic_perform_write`
//! (mm/filemap.c) calls once per folio a buffered `write`, `pwrite`, `writev` or `splice` into
//! the file fills, `copied` being the bytes copied into that folio. Delayed allocation (the
//! default) takes the first; `nodelalloc` and the fall-back when free space runs low the
//! second (from inside `ext4_da_write_end`, before its own tracepoint, so a chunk never counts
//! twice); `data=journal` the third. Summing `copied` gives the bytes written: a
//! 10,000,019-byte file written in 65,536-byte calls counts 10,000,019.
//!
//! Not `write_begin`: its `len` is what the loop asks for, up to the largest folio size, and
//! `generic_perform_write` then trims it to the folio it got and asks again for the rest, so
//! a write into smaller folios counts part of itself twice (traced on 6.18: 10,007,496 bytes
//! for that file; the `copied` of `write_end` summed to 10,000,019).
//!
//! xfs (fs/xfs/xfs_file.c): `xfs_file_buffered_write(struct kiocb *iocb, struct iov_iter
//! *from)` fires once per buffered write call, after `generic_write_checks` clipped the count
//! to the limits; the bytes are the iterator's count, what the caller asked for.
//!
//! Counted before the filesystem's last word: a copy cut short by a fault in the writer's
//! buffer, into a folio not yet up to date, is thrown away and retried, and counts twice; an
//! xfs write that fails (`ENOSPC`, retried once by xfs) counts what it asked for. Not counted:
//! `O_DIRECT` writes and stores through a shared mapping (neither passes these tracepoints),
//! and other filesystems.
//!
//! These fire per folio of every buffered write on the host, so the work is one per-CPU hash
//! lookup and two adds; the path walk happens once per (process, file), on creation. Per-CPU
//! sums, like the flows': exact when threads of one process write one file from several CPUs
//! at once, without atomics (the BPF target has no atomic read-modify-write in stable Rust)
//! and without a cache line bouncing between the writers.

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use sensor_common::{FileKey, FileWrite, MAP_FILE_WRITES, PROG_FILE_WRITE};

use crate::{
    file_read::{add_overflow, inode_fields, send_path_once},
    flow::{ReadError, read_kernel},
    maps::{FILE_WRITE_OVERFLOW, FILE_WRITES, KERNEL_DROPS, KERNEL_ERRORS, LAYOUT, agent, bump},
};

#[raw_tracepoint(tracepoint = "ext4_da_write_end")]
pub fn ext4_da_write_end(ctx: RawTracePointContext) -> i32 {
    ext4_chunk(&ctx);
    0
}

#[raw_tracepoint(tracepoint = "ext4_write_end")]
pub fn ext4_write_end(ctx: RawTracePointContext) -> i32 {
    ext4_chunk(&ctx);
    0
}

#[raw_tracepoint(tracepoint = "ext4_journalled_write_end")]
pub fn ext4_journalled_write_end(ctx: RawTracePointContext) -> i32 {
    ext4_chunk(&ctx);
    0
}

/// `copied` (`arg(3)`, an `unsigned int`) bytes went into the inode in `arg(0)`.
#[inline(always)]
fn ext4_chunk(ctx: &RawTracePointContext) {
    let inode = ctx.arg::<u64>(0) as *const u8;
    // The kernel widens each argument to u64; only the low 32 bits are the `unsigned int`.
    let copied = ctx.arg::<u64>(3) & 0xffff_ffff;
    if try_write(inode, copied).is_err() {
        bump(&KERNEL_ERRORS, PROG_FILE_WRITE);
    }
}

#[raw_tracepoint(tracepoint = "xfs_file_buffered_write")]
pub fn xfs_file_buffered_write(ctx: RawTracePointContext) -> i32 {
    let iocb = ctx.arg::<u64>(0) as *const u8;
    let from = ctx.arg::<u64>(1) as *const u8;
    if try_xfs(iocb, from).is_err() {
        bump(&KERNEL_ERRORS, PROG_FILE_WRITE);
    }
    0
}

fn try_xfs(iocb: *const u8, from: *const u8) -> Result<(), ReadError> {
    let layout = LAYOUT.load();
    let count: u64 = read_kernel(from, layout.iter_count)?;
    let file: u64 = read_kernel(iocb, layout.kiocb_filp)?;
    let inode: u64 = read_kernel(file as *const u8, layout.file_inode)?;
    try_write(inode as *const u8, count)
}

/// Adds `bytes` written by the current process to `inode`'s entry, creating it (and sending
/// the file's path) on the process's first write.
#[inline(always)]
fn try_write(inode: *const u8, bytes: u64) -> Result<(), ReadError> {
    if bytes == 0 {
        return Ok(());
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let agent = agent();
    if agent.tgid == tgid {
        return Ok(()); // the agent's own journal
    }
    let layout = LAYOUT.load();
    let key = inode_fields(inode, &layout)?.key(tgid, &layout)?;
    if let Some(sums) = FILE_WRITES.get_ptr_mut(key) {
        // SAFETY: this CPU's value of a live entry. Raw tracepoint programs run with
        // preemption off and the kernel never nests one program on a CPU
        // (kernel/trace/bpf_trace.c, `__bpf_trace_run`), so a plain add is exact.
        unsafe {
            (*sums).bytes += bytes;
            (*sums).writes += 1;
            // Each CPU's copy remembers its own generation: after a new agent, or on a CPU
            // this entry had not run on, one `PATH_SENT` lookup, then one compare a write.
            if (*sums).path_generation != agent.generation && send_path_once(inode, &key, &layout)?
            {
                (*sums).path_generation = agent.generation;
            }
        }
        return Ok(());
    }
    // A path the ring had no room for is asked for again at the next write.
    let generation = if send_path_once(inode, &key, &layout)? {
        agent.generation
    } else {
        agent.generation.wrapping_sub(1)
    };
    insert(&key, bytes, generation);
    Ok(())
}

/// A new (process, file) entry. A thread of the same process on another CPU may have created
/// it since our lookup (the insert then fails with `EEXIST`): add there. Only when the map is
/// full do the bytes count for the process alone.
#[inline(always)]
fn insert(key: &FileKey, bytes: u64, generation: u32) {
    let fresh = FileWrite {
        bytes,
        writes: 1,
        path_generation: generation,
        _pad: 0,
    };
    // A per-CPU entry created from a program holds `fresh` on this CPU, zeros on the others.
    if FILE_WRITES
        .insert(key, fresh, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        return;
    }
    if let Some(sums) = FILE_WRITES.get_ptr_mut(key) {
        // SAFETY: as in `try_write`.
        unsafe {
            (*sums).bytes += bytes;
            (*sums).writes += 1;
        }
        return;
    }
    bump(&KERNEL_DROPS, MAP_FILE_WRITES);
    add_overflow(&FILE_WRITE_OVERFLOW, key.tgid, bytes);
}
