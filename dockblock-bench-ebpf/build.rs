use which::which;

/// Rebuild when bpf-linker changes: it is invoked by cargo only as a linker,
/// which cargo does not track.
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
}
