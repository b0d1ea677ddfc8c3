//! Measuring: `wrk` runs against each target, interleaved rounds and their medians
//! (the table every section prints first), and the proxy's CPU and RSS read from
//! `/proc`.

use std::net::SocketAddr;
use std::ops::Index;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::context::Args;
use crate::hosts::Started;
use crate::tables::Table;

/// One target of a comparison: its label (its row in the table of medians, and the key
/// its median is looked up by), its address, and the process whose CPU and RSS are read.
pub struct Target<'a> {
    pub label: &'a str,
    pub addr: SocketAddr,
    pub pid: Option<u32>,
}

/// A started host as a target of `compare`.
pub fn target<'a>(label: &'a str, s: &Started) -> Target<'a> {
    Target {
        label,
        addr: s.addr,
        pid: Some(s.pid),
    }
}

/// The medians of a comparison, in target order, looked up by target label:
/// `m["portcullis + chain"].rps`.
pub struct Medians(Vec<(String, Run)>);

impl Index<&str> for Medians {
    type Output = Run;

    fn index(&self, label: &str) -> &Run {
        self.0
            .iter()
            .find_map(|(l, r)| (l == label).then_some(r))
            .unwrap_or_else(|| panic!("no target {label:?} in this comparison"))
    }
}

/// What wrk sends: fixed headers, or a Lua script.
pub struct Load {
    headers: Vec<String>,
    script: Option<PathBuf>,
}

impl Load {
    pub fn headers(h: &[String]) -> Load {
        Load {
            headers: h.to_vec(),
            script: None,
        }
    }

    pub fn script(p: &Path) -> Load {
        Load {
            headers: Vec::new(),
            script: Some(p.to_owned()),
        }
    }
}

/// Interleaved rounds over `targets`, a table of medians; returns the medians by target
/// label (labels are unique within a comparison).
pub fn compare(title: &str, targets: &[Target], load: &Load, a: &Args) -> Medians {
    for (i, t) in targets.iter().enumerate() {
        assert!(
            targets[..i].iter().all(|o| o.label != t.label),
            "two targets labelled {:?}",
            t.label
        );
    }
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    for round in 0..a.rounds {
        for (i, t) in targets.iter().enumerate() {
            let r = measure(t.addr, t.pid, load, a);
            eprintln!(
                "round {} {:>32}: {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  cpu {:>5.2} s",
                round + 1,
                t.label,
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.cpu_s
            );
            results[i].push(r);
        }
    }
    println!("\n## {title}");
    let mut table = Table::new(&[
        "target",
        "req/s",
        "p50 ms",
        "p99 ms",
        "req per CPU-second",
        "peak RSS MB",
    ]);
    let mut med = Vec::new();
    for (t, runs) in targets.iter().zip(&results) {
        let m = Run::median(runs);
        let peak = t.pid.map_or(0, peak_rss_kb) as f64 / 1024.0;
        table.row(&[
            t.label.to_owned(),
            format!("{:.0}", m.rps),
            format!("{:.3}", m.p50_ms),
            format!("{:.3}", m.p99_ms),
            format!("{:.0}", m.rps_per_cpu()),
            format!("{peak:.1}"),
        ]);
        med.push((t.label.to_owned(), m));
    }
    table.print();
    Medians(med)
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu_s: f64,
    pub seconds: f64,
}

impl Run {
    pub fn rps_per_cpu(&self) -> f64 {
        if self.cpu_s > 0.0 {
            self.rps * self.seconds / self.cpu_s
        } else {
            0.0
        }
    }

    fn median(runs: &[Run]) -> Run {
        let pick = |f: fn(&Run) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        Run {
            rps: pick(|r| r.rps),
            p50_ms: pick(|r| r.p50_ms),
            p99_ms: pick(|r| r.p99_ms),
            cpu_s: pick(|r| r.cpu_s),
            seconds: pick(|r| r.seconds),
        }
    }
}

fn measure(addr: SocketAddr, pid: Option<u32>, load: &Load, a: &Args) -> Run {
    let cpu0 = pid.map_or(0.0, cpu_seconds);
    let mut wrk = Command::new("wrk");
    for h in &load.headers {
        wrk.args(["-H", h]);
    }
    if let Some(s) = &load.script {
        wrk.arg("-s").arg(s);
    }
    let out = wrk
        .args([
            "-t1",
            &format!("-c{}", a.connections),
            &format!("-d{}s", a.seconds),
            "--latency",
        ])
        .arg(format!("http://{addr}/bench"))
        .output()
        .expect("wrk runs");
    let cpu1 = pid.map_or(0.0, cpu_seconds);
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Requests/sec:")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0);
    let pct = |p: &str| {
        text.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(p))
                .then(|| it.next().map(parse_ms))
                .flatten()
        })
    };
    if text.contains("Non-2xx") {
        eprintln!("warning: non-2xx answers from {addr}:\n{text}");
    }
    Run {
        rps,
        p50_ms: pct("50%").unwrap_or(0.0),
        p99_ms: pct("99%").unwrap_or(0.0),
        cpu_s: cpu1 - cpu0,
        seconds: a.seconds as f64,
    }
}

fn parse_ms(v: &str) -> f64 {
    let num = |s: &str| s.parse::<f64>().unwrap_or(0.0);
    if let Some(x) = v.strip_suffix("us") {
        num(x) / 1000.0
    } else if let Some(x) = v.strip_suffix("ms") {
        num(x)
    } else if let Some(x) = v.strip_suffix('s') {
        num(x) * 1000.0
    } else {
        num(v)
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

pub fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

fn peak_rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:")
}
