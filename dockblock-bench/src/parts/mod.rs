//! The parts of a run (the layer above peers and traffic): each takes the
//! world as it is, measures, returns its JSON and leaves nothing behind.

pub mod apply;
pub mod cost;
pub mod floods;
pub mod legit;
pub mod scaling;
pub mod swap;

use anyhow::{bail, Result};
use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use crate::peers::{self, Variant};

/// Set by SIGINT/SIGTERM; checked between steps.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// What every part is told about the run.
pub struct Ctx {
    pub quick: bool,
    /// Variant ids to run (empty: all).
    pub variants: Vec<String>,
    pub rounds: usize,
    pub start: Instant,
}

impl Ctx {
    pub fn check_stop(&self) -> Result<()> {
        if STOP.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    }

    pub fn wants(&self, v: Variant) -> bool {
        self.variants.is_empty() || self.variants.iter().any(|id| id == v.id())
    }

    pub fn log(&self, msg: &str) {
        println!("bench [{:>4.0}s]: {msg}", self.start.elapsed().as_secs_f64());
    }
}

/// What is still in place from any peer or part, if anything: checked
/// after every teardown, since a rule left behind would distort every
/// later measurement.
pub fn leftovers() -> Option<String> {
    let found: Vec<String> = [peers::leftovers(), swap::leftovers()].into_iter().flatten().collect();
    (!found.is_empty()).then(|| found.join(", "))
}

/// Removes what any peer or part may have left (start and end of a run).
pub fn remove_all() {
    peers::remove_all_rules();
    swap::remove_all();
    cost::remove_pair();
}
