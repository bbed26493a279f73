//! What the programs need to know about the running kernel, read at start: struct field
//! offsets from BTF, and the ephemeral port range.

use sensor_common::{INODE_SPAN_LEN, KernelLayout, PortRange, SOCK_HEAD_LEN};

use super::btf::Btf;

/// Field offsets of this kernel, from BTF. An error names the type that lacked a field.
pub fn kernel_layout(btf: &Btf) -> Result<KernelLayout, String> {
    let offset = |strukt: &str, member: &str| -> Result<u16, String> {
        let offset = btf
            .member_offset(strukt, member)
            .map_err(|e| e.to_string())?;
        u16::try_from(offset).map_err(|_| format!("{strukt}.{member} at {offset} is too far"))
    };
    let path_offset = |strukt: &str, path: &[&str]| -> Result<u16, String> {
        let offset = btf
            .member_path_offset(strukt, path)
            .map_err(|e| e.to_string())?;
        u16::try_from(offset).map_err(|_| format!("{strukt}.{} is too far", path.join(".")))
    };
    let layout = KernelLayout {
        skc_daddr: offset("sock_common", "skc_daddr")?,
        skc_dport: offset("sock_common", "skc_dport")?,
        skc_num: offset("sock_common", "skc_num")?,
        skc_family: offset("sock_common", "skc_family")?,
        skc_v6_daddr: offset("sock_common", "skc_v6_daddr")?,
        sk_protocol: offset("sock", "sk_protocol")?,
        task_pid: offset("task_struct", "pid")?,
        task_tgid: offset("task_struct", "tgid")?,
        bprm_filename: offset("linux_binprm", "filename")?,
        mapping_host: offset("address_space", "host")?,
        inode_ino: offset("inode", "i_ino")?,
        inode_sb: offset("inode", "i_sb")?,
        inode_size: offset("inode", "i_size")?,
        sb_dev: offset("super_block", "s_dev")?,
        page_shift: page_shift()?,
        inode_dentry: offset("inode", "i_dentry")?,
        dentry_alias: path_offset("dentry", &["d_u", "d_alias"])?,
        dentry_parent: offset("dentry", "d_parent")?,
        dentry_name: offset("dentry", "d_name")?,
        qstr_name: offset("qstr", "name")?,
        kiocb_filp: offset("kiocb", "ki_filp")?,
        kiocb_pos: offset("kiocb", "ki_pos")?,
        file_inode: offset("file", "f_inode")?,
        iter_data_source: offset("iov_iter", "data_source")?,
        iter_count: offset("iov_iter", "count")?,
        inode_generation: offset("inode", "i_generation")?,
        _pad: [0; 2],
    };
    for (field, at, size) in [
        ("skc_daddr", layout.skc_daddr, 4),
        ("skc_dport", layout.skc_dport, 2),
        ("skc_num", layout.skc_num, 2),
        ("skc_family", layout.skc_family, 2),
    ] {
        if at + size > SOCK_HEAD_LEN {
            return Err(format!(
                "sock_common.{field} at {at} lies outside the first {SOCK_HEAD_LEN} bytes the \
                 socket programs read"
            ));
        }
    }
    let inode = [
        ("i_sb", layout.inode_sb, 8),
        ("i_ino", layout.inode_ino, 8),
        ("i_size", layout.inode_size, 8),
    ];
    let base = inode.iter().map(|(_, at, _)| *at).min().unwrap_or(0);
    for (field, at, size) in inode {
        if at - base + size > INODE_SPAN_LEN {
            return Err(format!(
                "inode.{field} at {at}: i_sb, i_ino and i_size must lie within the \
                 {INODE_SPAN_LEN} bytes the file programs read in one call"
            ));
        }
    }
    Ok(layout)
}

/// log2 of the page size, for turning page indexes into bytes.
fn page_shift() -> Result<u16, String> {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    match u64::try_from(size) {
        Ok(size) if size.is_power_of_two() => Ok(size.trailing_zeros() as u16),
        _ => Err(format!("the page size {size} is not a power of two")),
    }
}

/// `net.ipv4.ip_local_port_range` (it also governs IPv6); the kernel's default when unreadable.
pub fn ephemeral_ports() -> PortRange {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";
    let parsed = std::fs::read_to_string(PATH).ok().and_then(|text| {
        let mut ports = text.split_whitespace().map(str::parse::<u16>);
        Some(PortRange {
            low: ports.next()?.ok()?,
            high: ports.next()?.ok()?,
        })
    });
    parsed.unwrap_or_else(|| {
        tracing::warn!(
            path = PATH,
            "unreadable; assuming the kernel default 32768-60999"
        );
        PortRange {
            low: 32_768,
            high: 60_999,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_running_kernel_fits_the_socket_programs() {
        let btf = Btf::from_file(Path::new("/sys/kernel/btf/vmlinux")).expect("kernel BTF");
        let layout = kernel_layout(&btf).expect("layout");
        // struct sock_common's head has not moved since Linux 2.6 (include/net/sock.h).
        assert_eq!(
            (
                layout.skc_daddr,
                layout.skc_dport,
                layout.skc_num,
                layout.skc_family
            ),
            (0, 12, 14, 16)
        );
        assert_eq!(layout.page_shift, 12, "4 KiB pages on x86_64");
    }
}
