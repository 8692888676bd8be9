//! Detach, and the bookkeeping around every changing command: take the lock,
//! finish what a killed command left in the journal, then change.
//!
//! Detaching everything first switches the datapath to an empty generation
//! (one write: every verdict is "pass" from then on), then unpins links and
//! maps. A kill at any point leaves the old rules in force or none, and the
//! journal says to finish; the next changing command finishes it.

use crate::{
    error::{Error, Result},
    journal::{self, Change, Journal},
    link_info,
    lock::PinLock,
    paths::{LinkPin, PinDir},
    store::RuleStore,
    testhook,
};

/// Takes the lock and opens the store for a rule change, after finishing
/// whatever a killed command left half-done. `NotAttached` when the pins
/// are gone (also when a detach was waiting to be finished).
pub fn begin_change(pins: &PinDir) -> Result<(PinLock, RuleStore)> {
    let lock = PinLock::acquire(pins.root())?;
    if let Some(Change::Detach { interfaces }) = journal::read(pins)?.change {
        finish_detach(pins, &interfaces)?;
        if interfaces.is_empty() {
            return Err(Error::NotAttached { pin_dir: pins.root().into() });
        }
    }
    let mut store = RuleStore::open(pins)?;
    store.recover()?;
    Ok((lock, store))
}

/// `repair`: under the lock, finishes a killed change, gives every pin back
/// to root (0700/0600) and rebuilds both generations from the catalog.
/// Returns what it did, one line each.
pub fn repair(pins: &PinDir) -> Result<Vec<String>> {
    let mut done = Vec::new();
    if !pins.root().exists() {
        if journal::read(pins)? != Journal::default() {
            journal::write(pins, &Journal::default())?;
            done.push("cleared the journal of a command whose pins are gone".into());
            return Ok(done);
        }
        return Err(Error::NotAttached { pin_dir: pins.root().into() });
    }
    let _lock = PinLock::acquire(pins.root())?;
    if let Some(change @ Change::Detach { .. }) = journal::read(pins)?.change {
        let Change::Detach { interfaces } = &change else { unreachable!() };
        finish_detach(pins, interfaces)?;
        done.push(format!("finished: {}", change.describe()));
        if interfaces.is_empty() {
            return Ok(done);
        }
    }
    for path in pins.secure().map_err(|e| Error::io("secure", pins.root(), e))? {
        done.push(format!("gave {} to root (0700/0600)", path.display()));
    }
    let mut store = RuleStore::open(pins)?;
    // A finished change rebuilt the tables; otherwise check them.
    if let Some(change) = store.recover()? {
        done.push(format!("finished: {}", change.describe()));
    } else if let drift @ ((1.., _) | (_, 1..)) = store.generation_drift()? {
        store.resync()?;
        done.push(format!(
            "rebuilt the port tables from the catalog ({} + {} entries were off)",
            drift.0, drift.1
        ));
    }
    let journal = journal::read(pins)?;
    if let Some(command) = journal.attach {
        done.push(format!("an attach was interrupted: run `{command}` again"));
    }
    if done.is_empty() {
        done.push("nothing to repair".into());
    }
    Ok(done)
}

/// Detaches `interfaces` (all when empty). Detaching everything also removes
/// the maps, the rules in them and the pin folder.
pub fn detach(pins: &PinDir, interfaces: &[String]) -> Result<Vec<LinkPin>> {
    if !pins.root().exists() && journal::read(pins)?.change.is_some() {
        // Killed after the pin folder went: only the journal is left.
        journal::write(pins, &Journal::default())?;
        return Ok(vec![]);
    }
    let _lock = PinLock::acquire(pins.root())?;
    let pending = match journal::read(pins)?.change {
        Some(Change::Detach { interfaces }) => Some(interfaces),
        _ => None,
    };
    if !pins.is_attached() && pins.links().is_empty() && pending.is_none() {
        return Err(Error::NotAttached { pin_dir: pins.root().into() });
    }
    let links = pins.links();
    for name in interfaces {
        let finishing = pending.as_ref().is_some_and(|p| p.is_empty() || p.contains(name));
        if !finishing && !links.iter().any(|l| &l.interface == name) {
            return Err(Error::NotAttachedTo { name: name.clone() });
        }
    }
    if let Some(p) = &pending {
        // A killed detach first: it may cover more than this one.
        let mut done = finish_detach(pins, p)?;
        if p.is_empty() {
            return Ok(done);
        }
        journal::set_change(pins, Some(Change::Detach { interfaces: interfaces.to_vec() }))?;
        done.extend(finish_detach(pins, interfaces)?);
        return Ok(done);
    }
    journal::set_change(pins, Some(Change::Detach { interfaces: interfaces.to_vec() }))?;
    finish_detach(pins, interfaces)
}

/// Does (or finishes) the detach the journal announced.
fn finish_detach(pins: &PinDir, interfaces: &[String]) -> Result<Vec<LinkPin>> {
    let everything = interfaces.is_empty();
    if everything {
        if let Ok(mut store) = RuleStore::open(pins) {
            store.switch_to_empty()?;
        }
    }
    // Veth links included: a full detach leaves no container hook behind.
    let chosen = unpin_links(
        pins.links().into_iter().filter(|l| everything || interfaces.contains(&l.interface)).collect(),
    )?;
    if !everything {
        journal::set_change(pins, None)?;
        return Ok(chosen);
    }
    for name in dockblock_common::map_names::ALL {
        remove_pin(&pins.map(name))?;
    }
    match std::fs::remove_dir_all(pins.root()) {
        Ok(()) => testhook::step(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove pin folder", pins.root(), e)),
    }
    journal::write(pins, &Journal::default())?;
    Ok(chosen)
}

/// Renames the pin of every link whose interface was renamed to the
/// interface's new name (`attach NEW` then finds and keeps it). Returns
/// (old, new) names.
pub fn adopt_renamed(pins: &PinDir) -> Result<Vec<(String, String)>> {
    let mut renamed = Vec::new();
    for pin in pins.links() {
        let Ok(info) = link_info::read(&pin.path) else { continue };
        let Some(now) = (info.ifindex != 0).then(|| link_info::ifname(info.ifindex)).flatten() else {
            continue;
        };
        let target = pins.link(pin.kind, &now);
        if now == pin.interface || target.exists() {
            continue;
        }
        std::fs::rename(&pin.path, &target).map_err(|e| Error::io("rename link pin", &pin.path, e))?;
        testhook::step();
        renamed.push((pin.interface, now));
    }
    Ok(renamed)
}

/// Unpins `links` (removing the last reference destroys a link), judging
/// links first: once they are gone the interface is open, whatever happens
/// to the tracking links after. Returns them in that order.
pub(crate) fn unpin_links(mut links: Vec<LinkPin>) -> Result<Vec<LinkPin>> {
    links.sort_by_key(|l| l.kind.is_tracking());
    for link in &links {
        remove_pin(&link.path)?;
    }
    Ok(links)
}

fn remove_pin(path: &std::path::Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            testhook::step();
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("unpin", path, e)),
    }
}

/// Before `attach`: creates the pin folders (root's, 0700), takes the lock,
/// finishes a killed detach, and notes in the journal that an attach is
/// under way (with its command line, for `status` if it gets killed).
pub fn begin_attach(pins: &PinDir) -> Result<PinLock> {
    loop {
        for dir in [pins.maps_dir(), pins.links_dir()] {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        }
        pins.secure().map_err(|e| Error::io("secure", pins.root(), e))?;
        let lock = match PinLock::acquire(pins.root()) {
            Ok(lock) => lock,
            // A detach removed the folder between our mkdir and our lock.
            Err(Error::NotAttached { .. }) => continue,
            Err(e) => return Err(e),
        };
        let mut journal = journal::read(pins)?;
        if let Some(Change::Detach { interfaces }) = &journal.change {
            finish_detach(pins, interfaces)?;
            if interfaces.is_empty() {
                continue; // the folder we locked is gone: start afresh
            }
            journal = journal::read(pins)?;
        }
        journal.attach = Some(std::env::args().collect::<Vec<_>>().join(" "));
        journal::write(pins, &journal)?;
        return Ok(lock);
    }
}

/// After `attach`: finishes a killed rule change, fixes owners and modes
/// of every pin, and clears the journal's attach note. `ok` says whether
/// the attach succeeded (a failed first attach has removed the folder).
pub fn end_attach(pins: &PinDir, ok: bool) -> Result<()> {
    let mut journal = journal::read(pins)?;
    if !ok && !pins.root().exists() {
        return journal::write(pins, &Journal::default());
    }
    if ok {
        pins.secure().map_err(|e| Error::io("secure", pins.root(), e))?;
    }
    journal.attach = None;
    journal::write(pins, &journal)
}
