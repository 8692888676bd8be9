//! Builds the benchmark's kernel programs (dockblock-bench-ebpf) with
//! nightly for bpfel and puts the object in OUT_DIR, where probe/mod.rs
//! embeds it; the same way dockblock-agent builds its own.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../dockblock-bench-ebpf");
    let ebpf = Package { name: "dockblock-bench-ebpf", root_dir: root, ..Default::default() };
    aya_build::build_ebpf([ebpf], Toolchain::Nightly)
}
