//! `dockblock-bench latency`: request latency of the allowed published port.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::Opts;

/// `--count` HTTP/1.0 GETs to `--addr`, one after another, each bounded by
/// `--timeout-ms`, for at most `--seconds`. A request that fails or times
/// out counts as a failure and is left out of the percentiles.
pub fn run(opts: &Opts) -> Result<Value> {
    let addr: SocketAddr = opts.str("addr")?.parse()?;
    let count: usize = opts.num("count", 200)?;
    let timeout = Duration::from_millis(opts.num("timeout-ms", 1000)?);
    let limit = Duration::from_secs_f64(opts.num("seconds", 10.0)?);
    let start = Instant::now();
    let mut samples = Vec::with_capacity(count);
    let mut failures = 0usize;
    for _ in 0..count {
        if start.elapsed() > limit {
            break;
        }
        let t = Instant::now();
        match request(addr, timeout) {
            Ok(()) => samples.push(t.elapsed().as_secs_f64() * 1e6),
            Err(_) => failures += 1,
        }
    }
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| -> Value {
        if samples.is_empty() {
            return Value::Null;
        }
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        json!(samples[i])
    };
    Ok(json!({
        "ok": samples.len(), "failures": failures,
        "p50_us": pct(0.5), "p90_us": pct(0.9), "p99_us": pct(0.99), "max_us": pct(1.0),
    }))
}

fn request(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    if !body.starts_with(b"HTTP/1.") {
        bail!("not an HTTP response");
    }
    Ok(())
}
