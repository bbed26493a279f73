//! Files: the payload of the file-to-socket paths, and reading a file by every path.

use std::{
    io::{Read as _, Write as _},
    os::fd::AsRawFd as _,
};

use anyhow::{Context as _, bail};

use crate::{CHUNK, hold, say};

/// The file the file-to-socket paths send: `EXFIL_TRAFFIC_PAYLOAD` when set, else a new file
/// of `bytes` bytes, already unlinked.
pub(crate) fn payload_file(bytes: u64) -> anyhow::Result<std::fs::File> {
    if let Some(path) = std::env::var_os("EXFIL_TRAFFIC_PAYLOAD") {
        return std::fs::File::open(&path)
            .with_context(|| format!("open {}", std::path::Path::new(&path).display()));
    }
    let path = std::env::temp_dir().join(format!("exfil-payload-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    let chunk = vec![0x3cu8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64))?;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(file)
}

pub(crate) fn read_file(path: &str, chunk: usize, via: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let mut file = std::fs::File::open(path).with_context(|| format!("open {path}"))?;
    let size = usize::try_from(file.metadata()?.len())?;
    let mut buf = vec![0u8; chunk.max(1)];
    let mut total = 0usize;
    match via {
        "read" => loop {
            match file.read(&mut buf)? {
                0 => break,
                n => total += n,
            }
        },
        "readv" => loop {
            let half = buf.len() / 2;
            let (first, second) = buf.split_at_mut(half);
            let mut slices = [
                std::io::IoSliceMut::new(first),
                std::io::IoSliceMut::new(second),
            ];
            match file.read_vectored(&mut slices)? {
                0 => break,
                n => total += n,
            }
        },
        // The first half, a pause until told to go on (a line on stdin), then the rest.
        "halves" => {
            let half = size / 2;
            while total < half {
                let want = buf.len().min(half - total);
                match file.read(&mut buf[..want])? {
                    0 => break,
                    n => total += n,
                }
            }
            say(&format!("half {total}"))?;
            hold()?;
            loop {
                match file.read(&mut buf)? {
                    0 => break,
                    n => total += n,
                }
            }
        }
        "pread" => {
            while total < size {
                match file.read_at(&mut buf, total as u64)? {
                    0 => break,
                    n => total += n,
                }
            }
        }
        "mmap" => {
            // SAFETY: a private read-only mapping of a file we opened, released below.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE,
                    file.as_raw_fd(),
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                bail!("mmap: {}", std::io::Error::last_os_error());
            }
            let bytes = base.cast::<u8>();
            let mut sum = 0u64;
            for offset in (0..size).step_by(4096).chain(std::iter::once(size - 1)) {
                // SAFETY: offset < size, inside the mapping.
                sum = sum.wrapping_add(u64::from(unsafe { bytes.add(offset).read_volatile() }));
            }
            std::hint::black_box(sum);
            // SAFETY: unmapping what we mapped.
            unsafe { libc::munmap(base, size) };
            total = size;
        }
        "direct" => total = read_direct(path, chunk)?,
        // Four threads `pread` the file at once, each every fourth chunk, as a parallel
        // uploader (`aws s3 cp`, `rclone`) reads its parts: one (process, file) entry for all.
        "threads" => total = read_threads(&file, size, chunk, 4)?,
        // Two threads take turns, one `read` of `chunk` bytes each, on the one file position:
        // a sequential read that hops between threads, as an async runtime's blocking pool
        // or Go's scheduler makes it.
        "turns" => total = read_in_turns(&file, chunk, 2)?,
        other => bail!("unknown read path {other}"),
    }
    say(&format!("read {total}"))?;
    hold()
}

/// `threads` threads read `file` at once, thread `t` the chunks `t`, `t + threads`, ...
fn read_threads(
    file: &std::fs::File,
    size: usize,
    chunk: usize,
    threads: usize,
) -> anyhow::Result<usize> {
    use std::os::unix::fs::FileExt as _;
    let chunk = chunk.max(1);
    let chunks = size.div_ceil(chunk);
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || -> std::io::Result<usize> {
                    let mut buf = vec![0u8; chunk];
                    let mut got = 0;
                    for c in (t..chunks).step_by(threads) {
                        let at = c * chunk;
                        let want = chunk.min(size - at);
                        file.read_exact_at(&mut buf[..want], at as u64)?;
                        got += want;
                    }
                    Ok(got)
                })
            })
            .collect();
        readers.into_iter().try_fold(0, |sum, r| {
            let got = r
                .join()
                .map_err(|_| anyhow::anyhow!("a reading thread panicked"))??;
            Ok(sum + got)
        })
    })
}

/// `threads` threads read `file` to its end through its shared position, one `read` of
/// `chunk` bytes each in turn.
fn read_in_turns(file: &std::fs::File, chunk: usize, threads: usize) -> anyhow::Result<usize> {
    use std::sync::{Condvar, Mutex};
    // (whose turn it is, bytes read so far, the end reached)
    let turn = Mutex::new((0usize, 0usize, false));
    let changed = Condvar::new();
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..threads)
            .map(|t| {
                let (turn, changed) = (&turn, &changed);
                scope.spawn(move || -> anyhow::Result<()> {
                    let mut buf = vec![0u8; chunk.max(1)];
                    let mut file = file;
                    loop {
                        let mut state = turn
                            .lock()
                            .map_err(|_| anyhow::anyhow!("a reading thread panicked"))?;
                        while state.0 != t && !state.2 {
                            state = changed
                                .wait(state)
                                .map_err(|_| anyhow::anyhow!("a reading thread panicked"))?;
                        }
                        if state.2 {
                            return Ok(());
                        }
                        let n = file.read(&mut buf)?;
                        state.1 += n;
                        state.2 = n == 0;
                        state.0 = (t + 1) % threads;
                        changed.notify_all();
                    }
                })
            })
            .collect();
        for r in readers {
            r.join()
                .map_err(|_| anyhow::anyhow!("a reading thread panicked"))??;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let (_, total, _) = *turn
        .lock()
        .map_err(|_| anyhow::anyhow!("a reading thread panicked"))?;
    Ok(total)
}

/// Reads with O_DIRECT, past the page cache, into a page-aligned buffer (as O_DIRECT needs).
pub(crate) fn read_direct(path: &str, chunk: usize) -> anyhow::Result<usize> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("open {path} with O_DIRECT"))?;
    let layout = std::alloc::Layout::from_size_align(chunk.max(4096), 4096)?;
    // SAFETY: a non-zero-sized layout; freed below.
    let buf = unsafe { std::alloc::alloc(layout) };
    if buf.is_null() {
        bail!("no memory for {chunk} bytes");
    }
    let mut total = 0usize;
    let result = loop {
        // SAFETY: buf holds layout.size() bytes.
        let n = unsafe { libc::read(file.as_raw_fd(), buf.cast(), layout.size()) };
        match usize::try_from(n) {
            Ok(0) => break Ok(total),
            Ok(n) => total += n,
            Err(_) => {
                break Err(anyhow::anyhow!(
                    "O_DIRECT read: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    };
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    result
}

/// Writes `size` bytes to `path` in `chunk`-byte calls, by `how`:
/// - `create`: a new (or truncated) file, written front to back with `write`;
/// - `overwrite`: an existing file, `pwrite` from offset 0, its size unchanged if larger;
/// - `threads`: a new file, four threads `pwrite`-ing a quarter each at once, so that one
///   process's writes to one file come from several CPUs.
///
/// Prints `wrote N` and stays alive until stdin closes.
pub(crate) fn write_file(path: &str, size: u64, chunk: usize, how: &str) -> anyhow::Result<()> {
    let chunk = chunk.max(1);
    let mut open = std::fs::OpenOptions::new();
    match how {
        "create" | "threads" => open.write(true).create(true).truncate(true),
        "overwrite" => open.write(true),
        other => bail!("unknown write path {other}"),
    };
    let mut file = open.open(path).with_context(|| format!("open {path}"))?;
    let block: Vec<u8> = (0..=255u8).cycle().take(chunk).collect();
    let total = match how {
        "threads" => {
            let file = std::sync::Arc::new(file);
            let quarter = size / 4;
            let workers: Vec<_> = (0..4u64)
                .map(|i| {
                    let (file, block) = (std::sync::Arc::clone(&file), block.clone());
                    let start = i * quarter;
                    let end = if i == 3 { size } else { start + quarter };
                    std::thread::spawn(move || write_range(&file, &block, start, end))
                })
                .collect();
            let mut total = 0;
            for worker in workers {
                total += worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("a writer thread panicked"))??;
            }
            total
        }
        "overwrite" => write_range(&file, &block, 0, size)?,
        _ => {
            let mut left = size;
            while left > 0 {
                let n = usize::try_from(left.min(chunk as u64))?;
                file.write_all(&block[..n])?;
                left -= n as u64;
            }
            size
        }
    };
    say(&format!("wrote {total}"))?;
    hold()
}

/// `pwrite`s bytes `start..end` of the file, `block` at a time; returns how many.
fn write_range(file: &std::fs::File, block: &[u8], start: u64, end: u64) -> anyhow::Result<u64> {
    use std::os::unix::fs::FileExt as _;
    let mut at = start;
    while at < end {
        let n = usize::try_from((end - at).min(block.len() as u64))?;
        file.write_all_at(&block[..n], at)?;
        at += n as u64;
    }
    Ok(end - start)
}
