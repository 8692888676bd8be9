use std::io::Read;

use dockblock_agent::{paths::PinDir, require_root, rulefile, teardown, Error, Result};

/// Reads and checks the whole file before touching anything (at most
/// `rulefile::MAX_BYTES`); then swaps the rule set in one generation switch.
pub fn run(pins: &PinDir, file: &str) -> Result<()> {
    let name = if file == "-" { "<stdin>" } else { file };
    let text = if file == "-" {
        read_bounded(std::io::stdin().lock(), name)?
    } else {
        let f = std::fs::File::open(file).map_err(|e| Error::io("read", file, e))?;
        read_bounded(f, name)?
    };
    let specs = rulefile::parse(name, &text)?;
    require_root()?;
    let (_lock, mut store) = teardown::begin_change(pins)?;
    let done = store.replace(&specs)?;
    println!(
        "applied {name}: {} rules ({} added, {} removed, {} unchanged)",
        specs.len(),
        done.added,
        done.removed,
        done.kept
    );
    Ok(())
}

/// The whole input as text, refusing it past the size limit without reading
/// further (`apply /dev/zero` stops at the limit).
fn read_bounded(input: impl Read, name: &str) -> Result<String> {
    let mut bytes = Vec::new();
    input
        .take(rulefile::MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", name, e))?;
    rulefile::check_size(name, bytes.len())?;
    String::from_utf8(bytes).map_err(|_| Error::RulesFile {
        path: name.to_string(),
        line: 1,
        why: "not UTF-8 text".into(),
    })
}
