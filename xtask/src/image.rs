//! `cargo xtask image`: the agent as a container image, built locally with
//! no registry pull. The release binary, the shared libraries `ldd` names
//! for it (the toolchain has no musl target, so the binary is dynamic) and
//! the loader go into an empty root, which `docker import` turns into an
//! image whose entrypoint is the agent and whose default command is `run`.
use crate::{build, util};
use anyhow::{bail, Context, Result};
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// Where the binary lives in the image (on PATH for `docker exec`).
const BINARY: &str = "/usr/local/bin/dockblock-agent";
/// Mount points the `docker run` line and the stack files bind: the config
/// folder (the agent reads /etc/dockblock/dockblock.toml by default), the
/// saved state, the journal and daemon state, and bpffs.
const DIRS: [&str; 4] = ["etc/dockblock", "var/lib/dockblock", "run/dockblock", "sys/fs/bpf"];

#[derive(clap::Args)]
pub struct Options {
    /// Name of the image.
    #[arg(long, default_value = "dockblock:latest")]
    pub tag: String,
}

pub fn run(opts: &Options) -> Result<()> {
    let binary = build::run(&build::Options { release: true })?;
    let root = util::target_dir().join("image").join("rootfs");
    make_root(&binary, &root)?;
    let tar = root.with_extension("tar");
    util::run(Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg("."))?;
    let mut import = Command::new("docker");
    import.arg("import");
    for change in [
        format!("ENTRYPOINT [\"{BINARY}\"]"),
        "CMD [\"run\"]".to_string(),
        format!("LABEL org.opencontainers.image.version=\"{}\"", env!("CARGO_PKG_VERSION")),
    ] {
        import.arg("--change").arg(change);
    }
    import.arg(&tar).arg(&opts.tag);
    util::run(&mut import)?;
    println!("image: {} ({})", opts.tag, util::output(Command::new("du").arg("-sh").arg(&root))?.trim());
    Ok(())
}

/// A fresh `root` holding `binary` at [`BINARY`], its libraries and loader
/// at the paths `ldd` resolves them to, and the empty [`DIRS`].
fn make_root(binary: &Path, root: &Path) -> Result<()> {
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("remove {}", root.display()))?;
    }
    for dir in DIRS {
        fs::create_dir_all(root.join(dir)).with_context(|| format!("create {}/{dir}", root.display()))?;
    }
    let ldd = util::output(Command::new("ldd").arg(binary));
    // ldd exits 1 on a static binary: then there is nothing to copy.
    let libs = match ldd {
        Ok(text) => libraries(&text)?,
        Err(e) if format!("{e:#}").contains("not a dynamic executable") => vec![],
        Err(e) => return Err(e),
    };
    for file in libs.iter().map(PathBuf::as_path).chain([binary]) {
        let inside = if file == binary { Path::new(BINARY) } else { file };
        let dest = root.join(inside.strip_prefix("/").expect("absolute"));
        fs::create_dir_all(dest.parent().expect("has a parent"))?;
        // fs::copy follows symlinks: the image gets the real file at the
        // name the loader looks for.
        fs::copy(file, &dest).with_context(|| format!("copy {} to {}", file.display(), dest.display()))?;
    }
    Ok(())
}

/// The absolute paths in `ldd` output: `libc.so.6 => /lib/.../libc.so.6
/// (0x..)` and the loader's `/lib64/ld-linux-x86-64.so.2 (0x..)`; the
/// vDSO has no file. A library ldd cannot find is an error, not a broken
/// image.
fn libraries(ldd: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for line in ldd.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            bail!("ldd cannot resolve a library of the agent: {line}");
        }
        let path = match line.split_once(" => ") {
            Some((_, rest)) => rest,
            None => line,
        };
        let path = path.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            out.push(PathBuf::from(path));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn reads_ldd_output() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f01)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n";
        let want: Vec<PathBuf> = [
            "/lib/x86_64-linux-gnu/libgcc_s.so.1",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2",
        ]
        .into_iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(super::libraries(ldd).unwrap(), want);
        assert!(super::libraries("\tlibfoo.so.1 => not found\n").is_err());
    }
}
