//! Builds the kernel programs (dockblock-ebpf) with nightly for bpfel and
//! puts the object in OUT_DIR, where lib.rs embeds it.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../dockblock-ebpf");
    let ebpf = Package { name: "dockblock-ebpf", root_dir: root, ..Default::default() };
    aya_build::build_ebpf([ebpf], Toolchain::Nightly)
}
