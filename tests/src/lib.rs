//! Helpers for dockblock's integration tests. The guards (network
//! namespaces, Docker), the command runner and the frame builder come from
//! dockblock-testkit, which the benchmark uses too; they are re-exported
//! here so tests keep their `dockblock_tests::...` paths. What is only the
//! tests' lives here: the agent guard, the end-to-end rig and the datapath
//! harness.

pub mod agent;
pub mod datapath;
pub mod dockerd;
pub mod prev_release;
pub mod rig;
pub mod scratch;

pub use dockblock_testkit::{
    cmd, describe, docker, is_root, netns, packet, quiet, run, run_for, run_ok, try_run_for,
};
