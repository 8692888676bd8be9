//! CPU and memory from /proc: one process's (the daemon: utime + stime of
//! all its threads, VmRSS, VmHWM) and the whole box's (`/proc/stat`: system
//! and softirq time of every CPU).
use anyhow::{Context, Result};
use dockblock_testkit::cmd;
use serde_json::{json, Value};
use std::{fs, time::Instant};

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds `pid` has used so far (all threads, user + system).
pub fn process_cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name, which ends at the last ')'.
    let rest = text.rsplit_once(')').map(|(_, r)| r).context("no ')' in /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let field = |n: usize| -> Result<f64> {
        fields.get(n - 3).and_then(|f| f.parse::<f64>().ok()).with_context(|| format!("field {n} of {path}"))
    };
    Ok((field(14)? + field(15)?) / ticks_per_second())
}

/// VmRSS and VmHWM of `pid`, in KiB.
pub fn process_memory_kib(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let get = |key: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse().ok())
            .with_context(|| format!("no {key} in {path}"))
    };
    Ok((get("VmRSS:")?, get("VmHWM:")?))
}

/// A process's CPU use from now on.
pub struct ProcessWindow {
    pid: u32,
    cpu: f64,
    start: Instant,
}

impl ProcessWindow {
    pub fn start(pid: u32) -> Result<Self> {
        Ok(ProcessWindow { pid, cpu: process_cpu_seconds(pid)?, start: Instant::now() })
    }

    /// CPU used since `start` as % of one core, and memory now.
    pub fn finish(&self) -> Result<Value> {
        let cpu = process_cpu_seconds(self.pid)? - self.cpu;
        let wall = self.start.elapsed().as_secs_f64();
        let mut out = memory(self.pid)?;
        out["seconds"] = json!(wall);
        out["cpu_seconds"] = json!(cpu);
        out["cpu_pct_of_one_core"] = json!(100.0 * cpu / wall);
        Ok(out)
    }
}

/// `pid`'s memory now, as the report reads it (MiB).
pub fn memory(pid: u32) -> Result<Value> {
    let (rss, hwm) = process_memory_kib(pid)?;
    Ok(json!({ "vm_rss_mib": rss as f64 / 1024.0, "vm_hwm_mib": hwm as f64 / 1024.0 }))
}

/// System and softirq CPU seconds of the whole box so far (every CPU).
pub fn box_sys_softirq_seconds() -> Result<f64> {
    let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text.lines().find(|l| l.starts_with("cpu ")).context("no cpu line in /proc/stat")?;
    let f: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...
    let (system, softirq) = (f.get(2).copied().unwrap_or(0.0), f.get(6).copied().unwrap_or(0.0));
    Ok((system + softirq) / ticks_per_second())
}

/// Run time and run count the kernel keeps for every loaded program whose
/// name starts with `dockblock_` (0 until `BpfStats` is on): what the hooks
/// cost during a run, apart from the run's own noise.
pub fn dockblock_prog_runtime() -> Result<(u64, u64)> {
    let out = cmd::ok(&["bpftool", "prog", "show", "--json"])?;
    let progs: Value = serde_json::from_str(&out).context("bpftool prog show --json")?;
    let ours = progs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("dockblock_")));
    Ok(ours.fold((0, 0), |(ns, n), p| {
        (ns + p["run_time_ns"].as_u64().unwrap_or(0), n + p["run_cnt"].as_u64().unwrap_or(0))
    }))
}

/// `kernel.bpf_stats_enabled` on while alive (it costs two clock reads per
/// program run), the old value back on drop.
pub struct BpfStats(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        let old = fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        fs::write(BPF_STATS, "1").with_context(|| format!("writing {BPF_STATS}"))?;
        Ok(BpfStats(old.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, &self.0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_our_own_process() {
        let pid = std::process::id();
        assert!(super::process_cpu_seconds(pid).unwrap() >= 0.0);
        let (rss, hwm) = super::process_memory_kib(pid).unwrap();
        assert!(rss > 0 && hwm >= rss);
        assert!(super::box_sys_softirq_seconds().unwrap() > 0.0);
    }
}
