use dockblock_agent::{paths::PinDir, require_root, status, Result};

use super::output::print_json;

pub fn run(pins: &PinDir, json: bool) -> Result<()> {
    require_root()?;
    let status = status::status(pins)?;
    if json {
        print_json(&status);
        return Ok(());
    }
    println!("pin folder: {}", status.pin_dir);
    if !status.attached {
        println!("not attached");
    }
    for l in &status.links {
        let mode = l.mode.map(|m| format!(" ({m})")).unwrap_or_default();
        let renamed = l.renamed_to.as_ref().map(|n| format!(" (now named {n})")).unwrap_or_default();
        println!(
            "{}{mode} {} {} on {} (ifindex {}): link {}, program {}, {}{renamed}",
            l.hook, l.direction, l.role, l.interface, l.ifindex, l.link_id, l.program_id, l.state
        );
    }
    if let Some(fill) = &status.rules {
        println!(
            "rules: {} of {} ({} port slots blocked)",
            fill.rules, fill.capacity, fill.blocked_port_slots
        );
        println!("allow-list entries: {} of {}", fill.allow_entries, fill.allow_capacity);
    }
    let d = &status.daemon;
    match (&d.pid, &d.engine) {
        (Some(pid), Some(engine)) if d.running => {
            let synced = d.last_sync.as_deref().unwrap_or("not yet");
            let since = d.since.as_deref().unwrap_or("?");
            println!("daemon: running (pid {pid}, since {since}), engine {engine}, last sync {synced}");
            for p in &d.problems {
                println!("  daemon problem: {p}");
            }
        }
        _ => match &d.stopped {
            Some(at) => println!("daemon: not running (stopped at {at})"),
            None => println!("daemon: not running"),
        },
    }
    let busy = if status.busy { " (a changing command is running)" } else { "" };
    println!("health: {}{busy}", status.health);
    for p in &status.problems {
        println!("  problem: {}", p.what);
        println!("  run: {}", p.run);
    }
    Ok(())
}
