// The kernel programs are in main.rs. This empty library lets dockblock-agent
// list this crate as a build-dependency, so cargo rebuilds the agent (and with
// it the embedded object) when anything here changes.
#![no_std]
