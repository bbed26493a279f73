//! File reads: bytes each process reads from each file, through the page cache.
//!
//! `mm_filemap_get_pages(struct address_space *mapping, pgoff_t index, pgoff_t last_index)`
//! fires in `filemap_read` (mm/filemap.c) for buffered `read`/`pread`/`readv` and the file
//! side of `sendfile`/`splice`; `mm_filemap_map_pages` and `mm_filemap_fault` for `mmap`.
//! They report page ranges, not bytes, and overlap: 1,000-byte reads report page 0 four
//! times, and one large read reports its remaining range once per batch ([768,1023],
//! [799,1023], ...). So each page of a sequential run counts once (a range that starts
//! inside the run counts only what lies past it), and the file's last page counts only up to
//! the file's size: a 10,000,019-byte file read in 1,000-byte calls counts 10,000,019.
//! Threads of one process read one file at once (a parallel uploader's parts): the run is
//! one word of the process's entry, moved by compare-and-swap, and the sums take atomic adds
//! (plain read-modify-writes from two CPUs lost up to 45 KB of a 10 MB file read by four
//! threads in 4 KiB chunks, in 4 runs of 10).
//!
//! Not seen: when a read's batch ends in a folio still being read back from disk (a partly
//! evicted file), `filemap_get_pages` drops it and returns the folios before it without
//! firing the tracepoint; they are copied uncounted (README, "Supported kernels and probes").
//!
//! `O_DIRECT` reads skip the page cache: `iomap_dio_rw_begin(struct kiocb *iocb, struct
//! iov_iter *iter, unsigned int dio_flags, size_t done_before)` (fs/iomap/direct-io.c, the
//! path of ext4, xfs and btrfs) gives the byte count, clipped to what lies before the end of
//! the file so that a short read at the end counts what it got.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes},
    macros::raw_tracepoint,
    maps::PerCpuHashMap,
    programs::RawTracePointContext,
};
use sensor_common::{
    FileId, FileKey, FilePathEvent, FileRead, INODE_SPAN_LEN, KernelLayout, MAP_FILE_OVERFLOW,
    MAP_FILE_PATHS, MAP_FILE_READS, PATH_DEPTH, PROG_FILE_READ, ReadRun,
};

use crate::{
    flow::{ReadError, bytes_at, read_kernel},
    maps::{
        FILE_OVERFLOW, FILE_PATHS, FILE_READS, KERNEL_DROPS, KERNEL_ERRORS, LAYOUT, PATH_SENT,
        agent, atomic_add, bump, compare_and_swap,
    },
};

#[raw_tracepoint(tracepoint = "mm_filemap_get_pages")]
pub fn mm_filemap_get_pages(ctx: RawTracePointContext) -> i32 {
    pages(&ctx, ctx.arg::<u64>(2));
    0
}

#[raw_tracepoint(tracepoint = "mm_filemap_map_pages")]
pub fn mm_filemap_map_pages(ctx: RawTracePointContext) -> i32 {
    pages(&ctx, ctx.arg::<u64>(2));
    0
}

#[raw_tracepoint(tracepoint = "mm_filemap_fault")]
pub fn mm_filemap_fault(ctx: RawTracePointContext) -> i32 {
    pages(&ctx, ctx.arg::<u64>(1));
    0
}

/// Pages `arg(1)..=last` of the mapping in `arg(0)` were read.
#[inline(always)]
fn pages(ctx: &RawTracePointContext, last: u64) {
    let first = ctx.arg::<u64>(1);
    let mapping = ctx.arg::<u64>(0) as *const u8;
    if try_pages(mapping, first, last).is_err() {
        bump(&KERNEL_ERRORS, PROG_FILE_READ);
    }
}

fn try_pages(mapping: *const u8, first: u64, last: u64) -> Result<(), ReadError> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let agent = agent();
    if agent.tgid == tgid {
        return Ok(());
    }
    let layout = LAYOUT.load();
    let inode: u64 = read_kernel(mapping, layout.mapping_host)?;
    let inode = inode as *const u8;
    let fields = inode_fields(inode, &layout)?;
    if fields.size <= 0 {
        return Ok(());
    }
    let shift = u64::from(layout.page_shift & 0x1f);
    let size = fields.size as u64;
    let last_page = (size - 1) >> shift;
    // Pages past the end of the file hold nothing the reader got.
    let last = if last < last_page { last } else { last_page };
    if first > last {
        return Ok(());
    }
    let key = fields.key(tgid, &layout)?;
    let span = |from: u64| {
        let whole = (last - from + 1) << shift;
        if last == last_page {
            // The last page holds only the file's tail.
            whole - ((1u64 << shift) - (size - (last_page << shift)))
        } else {
            whole
        }
    };
    let fresh = || FileRead {
        run: ReadRun {
            start: first,
            next: last + 1,
        }
        .pack(),
        bytes: span(first),
        reads: 1,
        path_generation: 0,
        _pad: 0,
    };
    record(&key, inode, agent.generation, &layout, fresh, |state| {
        if let Some(from) = advance(state, first, last) {
            add(state, span(from));
        }
    })
}

/// Moves the entry's run past a read of pages `first..=last`; the first page to count, or
/// `None` when every page is in already. One compare-and-swap of the run's word, tried again
/// while another thread of the process moves the run at the same instant; should it keep
/// losing, the whole range counts (counted twice rather than not at all).
#[inline(always)]
fn advance(state: *mut FileRead, first: u64, last: u64) -> Option<u64> {
    for _ in 0..8 {
        // SAFETY: a live entry's field; a whole aligned word.
        let old = unsafe { core::ptr::read_volatile(&raw const (*state).run) };
        let (from, run) = ReadRun::advance(ReadRun::unpack(old), first, last);
        if from > last {
            return None;
        }
        // SAFETY: as above.
        if unsafe { compare_and_swap(&raw mut (*state).run, old, run.pack()) } {
            return Some(from);
        }
    }
    Some(first)
}

/// One read of `bytes` into a live entry: atomic adds, as threads on other CPUs add too.
#[inline(always)]
fn add(state: *mut FileRead, bytes: u64) {
    // SAFETY: fields of a live map value, 8-byte aligned.
    unsafe {
        atomic_add(&raw mut (*state).bytes, bytes);
        atomic_add(&raw mut (*state).reads, 1);
    }
}

#[raw_tracepoint(tracepoint = "iomap_dio_rw_begin")]
pub fn iomap_dio_rw_begin(ctx: RawTracePointContext) -> i32 {
    let iocb = ctx.arg::<u64>(0) as *const u8;
    let iter = ctx.arg::<u64>(1) as *const u8;
    if try_direct(iocb, iter).is_err() {
        bump(&KERNEL_ERRORS, PROG_FILE_READ);
    }
    0
}

fn try_direct(iocb: *const u8, iter: *const u8) -> Result<(), ReadError> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let agent = agent();
    if agent.tgid == tgid {
        return Ok(());
    }
    let layout = LAYOUT.load();
    // `data_source`: the iterator supplies data, i.e. this is a write.
    if read_kernel::<u8>(iter, layout.iter_data_source)? != 0 {
        return Ok(());
    }
    let count: u64 = read_kernel(iter, layout.iter_count)?;
    let file: u64 = read_kernel(iocb, layout.kiocb_filp)?;
    let inode: u64 = read_kernel(file as *const u8, layout.file_inode)?;
    let inode = inode as *const u8;
    let fields = inode_fields(inode, &layout)?;
    let pos: i64 = read_kernel(iocb, layout.kiocb_pos)?;
    let left = if fields.size > pos {
        (fields.size - pos) as u64
    } else {
        0
    };
    let bytes = if count < left { count } else { left };
    if bytes == 0 {
        return Ok(());
    }
    let key = fields.key(tgid, &layout)?;
    let fresh = || FileRead {
        run: 0,
        bytes,
        reads: 1,
        path_generation: 0,
        _pad: 0,
    };
    // Direct reads leave the page run alone: they never pass the page cache.
    record(&key, inode, agent.generation, &layout, fresh, |state| {
        add(state, bytes)
    })
}

/// The `struct inode` fields every read and write needs, from one helper call.
pub(crate) struct InodeFields {
    sb: u64,
    ino: u64,
    size: i64,
}

const SPAN: usize = INODE_SPAN_LEN as usize;

#[inline(always)]
pub(crate) fn inode_fields(
    inode: *const u8,
    layout: &KernelLayout,
) -> Result<InodeFields, ReadError> {
    let base = layout.inode_sb.min(layout.inode_ino).min(layout.inode_size);
    let span: [u8; SPAN] = read_kernel(inode, base)?;
    Ok(InodeFields {
        sb: u64::from_ne_bytes(bytes_at(&span, layout.inode_sb.wrapping_sub(base))?),
        ino: u64::from_ne_bytes(bytes_at(&span, layout.inode_ino.wrapping_sub(base))?),
        size: i64::from_ne_bytes(bytes_at(&span, layout.inode_size.wrapping_sub(base))?),
    })
}

impl InodeFields {
    /// The map key of `tgid` reading (or writing) this inode: the device is the inode's
    /// `i_sb->s_dev`, whichever program computes it, so that reads and writes of one file
    /// share their (device, inode).
    #[inline(always)]
    pub(crate) fn key(&self, tgid: u32, layout: &KernelLayout) -> Result<FileKey, ReadError> {
        Ok(FileKey {
            tgid,
            dev: read_kernel(self.sb as *const u8, layout.sb_dev)?,
            ino: self.ino,
        })
    }
}

/// Adds a read to the key's entry with `add`, or creates the entry from `fresh` after sending
/// the file's path. An entry counted before this agent started (another `generation`) has
/// its path sent once more: the agent that learnt it is gone. One compare on every read after
/// that. An entry whose path did not fit in the ring is marked with another generation, so
/// that its next read tries again.
#[inline(always)]
fn record(
    key: &FileKey,
    inode: *const u8,
    generation: u32,
    layout: &KernelLayout,
    fresh: impl FnOnce() -> FileRead,
    add: impl FnOnce(*mut FileRead),
) -> Result<(), ReadError> {
    if let Some(state) = FILE_READS.get_ptr_mut(key) {
        add(state);
        // SAFETY: a live entry of a plain hash map; threads racing here write the same value.
        let state = unsafe { &mut *state };
        if state.path_generation != generation && send_path_once(inode, key, layout)? {
            state.path_generation = generation;
        }
        return Ok(());
    }
    let sent = send_path_once(inode, key, layout)?;
    let read = FileRead {
        path_generation: if sent {
            generation
        } else {
            generation.wrapping_sub(1)
        },
        ..fresh()
    };
    if FILE_READS.insert(key, read, u64::from(BPF_NOEXIST)).is_ok() {
        return Ok(());
    }
    // Another thread of this process created the entry since the lookup above: add to it.
    if let Some(state) = FILE_READS.get_ptr_mut(key) {
        add(state);
        return Ok(());
    }
    // The map is full: the bytes count for the process alone.
    bump(&KERNEL_DROPS, MAP_FILE_READS);
    add_overflow(&FILE_OVERFLOW, key.tgid, read.bytes);
    Ok(())
}

/// Adds `bytes` to the process's per-CPU overflow bucket, creating it on first use. When the
/// overflow map is full too, the bytes are lost: the refusal counts in
/// `KERNEL_DROPS[MAP_FILE_OVERFLOW]`, so that the loss shows.
#[inline(always)]
pub(crate) fn add_overflow(map: &PerCpuHashMap<u32, u64>, tgid: u32, bytes: u64) {
    match map.get_ptr_mut(tgid) {
        // SAFETY: this CPU's value of a live entry; programs do not nest on one CPU.
        Some(sum) => unsafe { *sum += bytes },
        None => {
            // BPF_ANY: should another CPU have made the entry since the lookup, this sets
            // only this CPU's value, which was zero.
            if map.insert(tgid, bytes, 0).is_err() {
                bump(&KERNEL_DROPS, MAP_FILE_OVERFLOW);
            }
        }
    }
}

/// Sends the file's path the first time any process reads or writes it (as far as
/// [`PATH_SENT`] remembers): the names from its dentry up to its filesystem's root, at most
/// `PATH_DEPTH`. `false` when the ring had no room: the file is then not remembered as sent,
/// and the caller asks again at its next read or write (a burst of more new files than the
/// ring holds between two polls, such as a mail store read by `imap` or `tar`, would
/// otherwise leave their paths, and so their classes, unknown for good).
#[inline(always)]
pub(crate) fn send_path_once(
    inode: *const u8,
    key: &FileKey,
    layout: &KernelLayout,
) -> Result<bool, ReadError> {
    let (dev, ino) = (key.dev, key.ino);
    let generation: u32 = read_kernel(inode, layout.inode_generation)?;
    let id = FileId {
        dev,
        generation,
        ino,
    };
    if PATH_SENT.get_ptr(id).is_some() {
        return Ok(true);
    }
    let _ = PATH_SENT.insert(id, 1, 0);
    // i_dentry.first: one of the inode's dentries (hard links have several; any will do).
    let alias: u64 = read_kernel(inode, layout.inode_dentry)?;
    if alias == 0 {
        return Ok(true); // unlinked while open: no name left to send
    }
    let Some(mut entry) = FILE_PATHS.reserve::<FilePathEvent>(0) else {
        bump(&KERNEL_DROPS, MAP_FILE_PATHS);
        let _ = PATH_SENT.remove(id);
        return Ok(false);
    };
    let event = entry.as_mut_ptr();
    let mut dentry = alias - u64::from(layout.dentry_alias);
    let mut depth = 0u32;
    let mut walked = Ok(());
    for i in 0..PATH_DEPTH {
        let name = read_kernel::<u64>(dentry as *const u8, layout.dentry_name + layout.qstr_name);
        let parent = read_kernel::<u64>(dentry as *const u8, layout.dentry_parent);
        let (Ok(name), Ok(parent)) = (name, parent) else {
            walked = Err(ReadError);
            break;
        };
        // SAFETY: `event` is our reserved slot; the helper bounds the copy to the array.
        let copied =
            unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut (*event).names[i]) };
        if copied.is_err() {
            walked = Err(ReadError);
            break;
        }
        depth += 1;
        if parent == dentry {
            break; // the filesystem's root is its own parent
        }
        dentry = parent;
    }
    if let Err(e) = walked {
        entry.discard(0);
        return Err(e);
    }
    // SAFETY: as above.
    unsafe {
        (*event).dev = dev;
        (*event).depth = depth;
        (*event).ino = ino;
    }
    entry.submit(0);
    Ok(true)
}
