// The programs are in main.rs. This empty library lets dockblock-bench list
// this crate as a build-dependency, so cargo rebuilds the bench (and with it
// the embedded object) when anything here changes.
#![no_std]
