//! A test's own files and environment: a scratch folder removed on drop,
//! and environment variables (inherited by the agent) set until dropped.
//! Tests run one at a time (`--test-threads=1`), so setting the process
//! environment is safe.

use std::ffi::OsString;
use std::path::PathBuf;

/// `/tmp/dockblock-test-<tag>`, emptied first, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("dockblock-test-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Scratch(dir)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }

    /// Writes `name` in the folder; returns its path.
    pub fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path.to_str().expect("utf-8 path").to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Environment variables set until dropped (then as they were).
pub struct Env(Vec<(String, Option<OsString>)>);

impl Env {
    pub fn set(vars: &[(&str, &str)]) -> Env {
        let old = vars
            .iter()
            .map(|(k, v)| {
                let was = std::env::var_os(k);
                std::env::set_var(k, v);
                (k.to_string(), was)
            })
            .collect();
        Env(old)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for (k, was) in self.0.drain(..).rev() {
            match was {
                Some(v) => std::env::set_var(&k, v),
                None => std::env::remove_var(&k),
            }
        }
    }
}
