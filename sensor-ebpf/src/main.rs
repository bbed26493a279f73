//! exfil-sensor kernel programs. This file only declares; see `maps.rs` for every map and
//! one module per hook family for the programs.
//!
//! Built for the BPF target by `sensor/build.rs`. On the host (`cargo clippy --workspace`)
//! it is an ordinary, empty binary, so that the same sources are type-checked and linted
//! there without clashing with the host's `std`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `core::intrinsics::atomic_xadd`: the BPF target has no atomic read-modify-write in `core`'s
// atomic types. The programs are built with nightly (`-Z build-std`) in any case.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

mod dns;
mod file_read;
mod file_write;
mod flow;
mod maps;
mod net_send;
mod process;
mod sock_state;
mod udp_dest;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

// GPL-compatible: `bpf_probe_read_kernel` is a GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
