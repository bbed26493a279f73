//! Building the programs needs the `bpf-linker` binary, which cargo cannot declare as a
//! dependency. Rebuild when it changes, and say how to get it when it is missing.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return; // the host build only compiles the empty library target
    }
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => {
            println!(
                "cargo:warning=bpf-linker not found on PATH ({err}); run `cargo xtask setup` \
                 or `cargo install bpf-linker@0.10.3 --locked`"
            );
            std::process::exit(1);
        }
    }
}
