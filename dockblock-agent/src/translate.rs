//! (being written: see spec/daemon.md)
