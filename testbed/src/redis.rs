//! A real Redis for tests (Debian's `redis-server`, installed by `.ci/run`): started on
//! a free loopback port with no persistence, stopped when dropped. It can be stopped
//! and started again on the same port, and paused, to test what a Redis outage does.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

fn free_port() -> Result<u16, String> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port())
}

/// The `redis-server` binary: `$PORTCULLIS_REDIS_SERVER`, else from `PATH`.
pub fn redis_binary() -> String {
    std::env::var("PORTCULLIS_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

impl RedisServer {
    pub fn start() -> Result<RedisServer, String> {
        let port = free_port()?;
        let dir =
            std::env::temp_dir().join(format!("portcullis-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut r = RedisServer {
            port,
            dir,
            child: None,
        };
        r.resume_process()?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the process again (after [`stop`](Self::stop)), empty, on the same port.
    pub fn resume_process(&mut self) -> Result<(), String> {
        let child = Command::new(redis_binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {}: {e} (install Debian's redis-server; .ci/run does)",
                    redis_binary()
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.command("PING").is_ok_and(|r| r.starts_with("+PONG")) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "redis-server on port {} did not answer PING",
            self.port
        ))
    }

    /// Kills the process: Redis is down until [`resume_process`](Self::resume_process).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends one inline command and returns the first line of the reply.
    pub fn command(&self, line: &str) -> Result<String, String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.write_all(format!("{line}\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_owned())
    }

    /// Makes Redis answer no client for `ms` milliseconds (CLIENT PAUSE).
    pub fn pause(&self, ms: u64) -> Result<(), String> {
        let r = self.command(&format!("CLIENT PAUSE {ms}"))?;
        if r.starts_with("+OK") {
            Ok(())
        } else {
            Err(format!("CLIENT PAUSE answered {r}"))
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
