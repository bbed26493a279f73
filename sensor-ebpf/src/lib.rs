#![no_std]
// This file exists so that the host can build the package (as a build-dependency of `sensor`,
// which makes cargo rebuild the eBPF object when these sources change). The programs are in
// the `sensor-ebpf` binary target, built for the BPF target by `sensor/build.rs`.
