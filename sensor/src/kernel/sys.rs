//! The few `bpf(2)` commands the tamper checks need that aya 0.14 does not expose on a link
//! or map the agent holds: its kernel id, whether a cgroup link is still attached, and
//! pinning a held object again. None needs CAP_SYS_ADMIN (the unit's capabilities have
//! none): objects are opened by their pins, never looked up by id. Values from
//! include/uapi/linux/bpf.h.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

/// `enum bpf_cmd`.
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `enum bpf_link_type`.
pub const LINK_TYPE_CGROUP: u32 = 3;

/// `union bpf_attr`'s `obj_pin` member (BPF_OBJ_PIN, BPF_OBJ_GET).
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `union bpf_attr`'s `info` member.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_link_info` and its `cgroup` member: the kernel fills what fits.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
struct RawLinkInfo {
    kind: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    /// For a cgroup link; 0 once it was detached (kernel/bpf/cgroup.c,
    /// bpf_cgroup_link_fill_link_info).
    cgroup_id: u64,
    attach_type: u32,
    _pad2: u32,
}

/// The head of `struct bpf_map_info`.
#[repr(C)]
#[derive(Default)]
struct RawMapInfo {
    kind: u32,
    id: u32,
}

/// What the kernel says of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub kind: u32,
    pub id: u32,
    pub prog_id: u32,
    pub cgroup_id: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a `union bpf_attr` member of the size passed; the kernel reads and
    // writes only within it, and through the pointers it holds, which point at live buffers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))
}

/// Opens the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let name = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: name.as_ptr() as u64,
        ..ObjAttr::default()
    };
    owned(bpf(BPF_OBJ_GET, &mut attr)?)
}

/// Pins the object `fd` holds at `path`.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let name = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: name.as_ptr() as u64,
        bpf_fd: u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX),
        ..ObjAttr::default()
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

fn info<T: Default>(fd: BorrowedFd<'_>) -> io::Result<T> {
    let mut out = T::default();
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX),
        info_len: u32::try_from(std::mem::size_of::<T>()).unwrap_or(0),
        info: std::ptr::from_mut(&mut out) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(out)
}

pub fn link_info(fd: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let raw: RawLinkInfo = info(fd)?;
    Ok(LinkInfo {
        kind: raw.kind,
        id: raw.id,
        prog_id: raw.prog_id,
        cgroup_id: if raw.kind == LINK_TYPE_CGROUP {
            raw.cgroup_id
        } else {
            0
        },
    })
}

/// The kernel id of the map `fd` holds.
pub fn map_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let raw: RawMapInfo = info(fd)?;
    Ok(raw.id)
}
