//! Builds the eBPF programs (`sensor-ebpf`) for the BPF target with the nightly toolchain and
//! bpf-linker; `src/kernel/mod.rs` embeds the object. `cargo xtask setup` installs both tools.

use std::path::Path;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest_dir).join("../sensor-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .context("the sensor-ebpf path is not UTF-8")?;
    let package = aya_build::Package {
        name: "sensor-ebpf",
        root_dir: ebpf_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default()).context(
        "building the eBPF programs failed; `cargo xtask setup` installs what they need \
         (nightly rust-src, bpf-linker)",
    )
}
