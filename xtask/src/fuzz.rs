//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs the coverage-guided fuzz targets
//! of `fuzz/` (cargo-fuzz, libFuzzer) one after the other, N seconds each (default
//! 60), and prints per target the inputs run, the coverage reached and whether it
//! crashed. Exits non-zero when any target found a crash, naming the input it saved.
//!
//! cargo-fuzz needs a nightly compiler (sanitizers, coverage instrumentation): a
//! nightly toolchain is installed with rustup and `cargo-fuzz` with `cargo install`
//! when missing. The fuzz crate is outside the workspace, so `cargo test` and CI never
//! build it. Each target's corpus grows in `fuzz/corpus/<target>` (not in git), seeded
//! from the small hand-made inputs in `fuzz/seeds/<target>`; its full log is kept in
//! `fuzz/logs/<target>.log`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::root;

/// Seconds each target runs when `--seconds` is not given.
const DEFAULT_SECONDS: u64 = 60;
/// An input that takes longer than this is reported as a hang (libFuzzer's `-timeout`).
const HANG_SECONDS: u64 = 25;

/// What one target's run came to.
struct Outcome {
    target: String,
    runs: Option<u64>,
    /// libFuzzer's last status: `cov: N ft: N corp: N/size`.
    coverage: Option<String>,
    /// Where libFuzzer saved the crashing (or hanging) input.
    artifact: Option<String>,
    ok: bool,
}

pub fn fuzz(args: &[String]) -> Result<(), String> {
    let (seconds, mut targets) = parse_args(args)?;
    ensure_nightly()?;
    ensure_cargo_fuzz()?;
    let dir = root().join("fuzz");
    if targets.is_empty() {
        targets = list_targets(&dir)?;
    }
    std::fs::create_dir_all(dir.join("logs")).map_err(|e| format!("fuzz/logs: {e}"))?;
    // One build for all targets first, so each target's seconds are spent fuzzing.
    run_in(
        &dir,
        nightly_cargo().args(["fuzz", "build", "--debug-assertions"]),
    )?;
    let mut outcomes = Vec::new();
    for t in &targets {
        outcomes.push(run_target(&dir, t, seconds)?);
    }
    eprintln!("\nfuzzing, {seconds} s per target:");
    for o in &outcomes {
        eprintln!(
            "  {:<26} {:>12} runs  {:<34} {}",
            o.target,
            o.runs.map_or("?".into(), |r| r.to_string()),
            o.coverage.as_deref().unwrap_or("cov: ?"),
            match (&o.artifact, o.ok) {
                (_, true) => "no crash".to_string(),
                (Some(a), false) => format!("CRASH: {a}"),
                (None, false) => "FAILED (see fuzz/logs)".to_string(),
            }
        );
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.target.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("fuzzing found crashes in: {}", failed.join(", ")))
    }
}

fn parse_args(args: &[String]) -> Result<(u64, Vec<String>), String> {
    let mut seconds = DEFAULT_SECONDS;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|&s| s > 0)
                    .ok_or("--seconds takes a positive number of seconds")?;
            }
            s if s.starts_with('-') => return Err(format!("fuzz: unknown option `{s}`")),
            t => targets.push(t.to_string()),
        }
    }
    Ok((seconds, targets))
}

/// `cargo` of the nightly toolchain, without the variables `cargo run` set for xtask:
/// `CARGO` and `RUSTUP_TOOLCHAIN` would send cargo-fuzz back to the stable compiler,
/// and build scripts that watch `CARGO_MANIFEST_DIR` or `CARGO_PKG_*` (ring's) would
/// see them change and rebuild from there on every run.
fn nightly_cargo() -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo"]);
    for v in ["CARGO", "RUSTUP_TOOLCHAIN", "RUSTC", "RUSTDOC", "OUT_DIR"] {
        c.env_remove(v);
    }
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        let kept = [
            "CARGO_HOME",
            "CARGO_BUILD_JOBS",
            "CARGO_NET_",
            "CARGO_HTTP_",
            "CARGO_REGISTR",
            "CARGO_TERM_",
        ]
        .iter()
        .any(|p| k.starts_with(p));
        if k.starts_with("CARGO_") && !kept {
            c.env_remove(k);
        }
    }
    c
}

fn run_in(dir: &Path, cmd: &mut Command) -> Result<(), String> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .current_dir(dir)
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({status})"))
    }
}

fn ensure_nightly() -> Result<(), String> {
    let have = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .map_err(|e| format!("cargo xtask fuzz needs rustup: {e}"))?;
    if have.status.success() {
        return Ok(());
    }
    run_in(
        &root(),
        Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]),
    )
}

fn ensure_cargo_fuzz() -> Result<(), String> {
    let have = nightly_cargo().args(["fuzz", "--version"]).output();
    if have.is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    run_in(
        &root(),
        Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]),
    )
}

fn list_targets(dir: &Path) -> Result<Vec<String>, String> {
    let out = nightly_cargo()
        .args(["fuzz", "list"])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cargo fuzz list: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo fuzz list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

fn run_target(dir: &Path, target: &str, seconds: u64) -> Result<Outcome, String> {
    let corpus = dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
    let mut cmd = nightly_cargo();
    cmd.args(["fuzz", "run", "--debug-assertions", target])
        .arg(&corpus);
    let seeds = dir.join("seeds").join(target);
    if seeds.is_dir() {
        // Read, never written: new inputs go to the first directory.
        cmd.arg(&seeds);
    }
    cmd.args([
        "--".to_string(),
        format!("-max_total_time={seconds}"),
        format!("-timeout={HANG_SECONDS}"),
        "-print_final_stats=1".to_string(),
    ]);
    eprintln!("\n== {target}: {seconds} s\n+ {cmd:?}");
    let mut child = cmd
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
    let log_path = dir.join("logs").join(format!("{target}.log"));
    let mut log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut outcome = Outcome {
        target: target.to_string(),
        runs: None,
        coverage: None,
        artifact: None,
        ok: false,
    };
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
            read_line(&line, &mut outcome);
            // The running status and anything that went wrong; not every new input.
            if line.contains("pulse")
                || line.contains("DONE")
                || line.contains("INITED")
                || line.contains("ERROR")
                || line.contains("panicked")
                || line.contains("Test unit written")
            {
                eprintln!("  {line}");
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("cargo fuzz run {target}: {e}"))?;
    outcome.ok = status.success();
    Ok(outcome)
}

/// Picks what the summary needs out of one line of libFuzzer's output.
fn read_line(line: &str, o: &mut Outcome) {
    if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
        o.runs = n.trim().parse().ok();
    }
    if let Some(at) = line.find("cov: ") {
        let status: Vec<&str> = line[at..].split_whitespace().take(6).collect();
        o.coverage = Some(status.join(" "));
    }
    if let Some((_, path)) = line.split_once("Test unit written to ") {
        o.artifact = Some(path.trim().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome() -> Outcome {
        Outcome {
            target: "t".into(),
            runs: None,
            coverage: None,
            artifact: None,
            ok: false,
        }
    }

    #[test]
    fn reads_libfuzzer_status_stats_and_artifacts() {
        let mut o = outcome();
        read_line(
            "#524288\tpulse  cov: 1203 ft: 4410 corp: 311/22Kb lim: 4096 exec/s: 8738 rss: 80Mb",
            &mut o,
        );
        read_line("stat::number_of_executed_units: 525012", &mut o);
        read_line(
            "artifact_prefix='/f/artifacts/jwks/'; Test unit written to /f/artifacts/jwks/crash-00ab",
            &mut o,
        );
        assert_eq!(
            o.coverage.as_deref(),
            Some("cov: 1203 ft: 4410 corp: 311/22Kb")
        );
        assert_eq!(o.runs, Some(525_012));
        assert_eq!(o.artifact.as_deref(), Some("/f/artifacts/jwks/crash-00ab"));
    }

    #[test]
    fn arguments() {
        let a = |s: &[&str]| parse_args(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(a(&[]), Ok((60, vec![])));
        assert_eq!(
            a(&["--seconds", "600", "jwks", "jwt_token"]),
            Ok((600, vec!["jwks".into(), "jwt_token".into()]))
        );
        assert!(a(&["--seconds", "0"]).is_err());
        assert!(a(&["--seconds"]).is_err());
        assert!(a(&["--jobs"]).is_err());
    }
}
