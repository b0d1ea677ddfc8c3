//! A real Redis for tests (Debian's `redis-server`, installed by `cargo xtask test`):
//! started on a free loopback port with no persistence, stopped when dropped. It can be
//! stopped and started again on the same port, and paused, to test what a Redis outage
//! does. Also a Redis Cluster ([`RedisCluster`]: three masters with a replica each) and
//! a Sentinel set ([`RedisSentinels`]: a master, a replica, three `redis-sentinel`),
//! all on loopback, whose masters can be killed to test a failover.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Arguments beyond the port, the address and no persistence.
    args: Vec<String>,
}

/// The `redis-server` binary: `$PORTCULLIS_REDIS_SERVER`, else from `PATH`.
pub fn redis_binary() -> String {
    std::env::var("PORTCULLIS_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// The `redis-cli` binary (Debian's `redis-tools`, which `redis-server` depends on).
pub fn redis_cli_binary() -> String {
    std::env::var("PORTCULLIS_REDIS_CLI").unwrap_or_else(|_| "redis-cli".into())
}

/// The `redis-sentinel` binary (Debian's `redis-sentinel`).
pub fn redis_sentinel_binary() -> String {
    std::env::var("PORTCULLIS_REDIS_SENTINEL").unwrap_or_else(|_| "redis-sentinel".into())
}

/// Runs `redis-cli -p port args...` and returns what it printed.
pub fn cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new(redis_cli_binary())
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "cannot run {}: {e} (install Debian's redis-tools; cargo xtask test does)",
                redis_cli_binary()
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || text.starts_with("ERR") || text.starts_with("(error)") {
        return Err(format!(
            "redis-cli -p {port} {}: {text}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(text)
}

fn wait_for(what: &str, secs: u64, mut check: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{what} (waited {secs} s)"))
}

fn scratch_dir(kind: &str, port: u16) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("portcullis-{kind}-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(dir)
}

impl RedisServer {
    pub fn start() -> Result<RedisServer, String> {
        RedisServer::start_with(&[])
    }

    /// A server with more `redis-server` arguments (`--replicaof`, cluster mode ...).
    pub fn start_with(args: &[&str]) -> Result<RedisServer, String> {
        let port = free_port();
        let mut r = RedisServer {
            port,
            dir: scratch_dir("redis", port)?,
            child: None,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
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
            .args(&self.args)
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

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
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

/// A Redis Cluster on loopback: three masters, each with one replica, a node timeout of
/// one second (a killed master is replaced within a few seconds). Stopped when dropped.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Result<RedisCluster, String> {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let bus = free_port().to_string();
            nodes.push(RedisServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus,
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
                // A replica takes over however long it was cut off (here: never).
                "--cluster-replica-validity-factor",
                "0",
            ])?);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        cli(nodes[0].port, &args)?;
        let cluster = RedisCluster { nodes };
        wait_for("the cluster did not settle", 30, || {
            cluster.nodes.iter().all(|n| {
                cli(n.port, &["CLUSTER", "INFO"]).is_ok_and(|i| {
                    i.contains("cluster_state:ok") && i.contains("cluster_known_nodes:6")
                })
            }) && cluster.masters().len() == 3
                && cluster
                    .nodes
                    .iter()
                    .filter(|n| !cluster.masters().contains(&n.port))
                    .all(|n| {
                        cli(n.port, &["INFO", "replication"])
                            .is_ok_and(|i| i.contains("master_link_status:up"))
                    })
        })?;
        Ok(cluster)
    }

    /// `redis://127.0.0.1:port` of every node, comma-separated (what
    /// `--redis-cluster` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The ports of the masters serving slots, as a running node sees them.
    pub fn masters(&self) -> Vec<u16> {
        let Some(view) = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .find_map(|n| cli(n.port, &["CLUSTER", "NODES"]).ok())
        else {
            return Vec::new();
        };
        view.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (addr, flags) = (f.get(1)?, f.get(2)?);
                (flags.contains("master") && !flags.contains("fail") && f.len() > 8)
                    .then(|| addr.split(['@', ':']).nth(1)?.parse().ok())?
            })
            .collect()
    }

    /// The port of the master that holds `key`'s slot.
    pub fn master_of(&self, key: &[u8]) -> Result<u16, String> {
        let key = String::from_utf8_lossy(key).into_owned();
        let node = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .ok_or("no node is running")?;
        let slot: u16 = cli(node.port, &["CLUSTER", "KEYSLOT", &key])?
            .trim()
            .parse()
            .map_err(|e| format!("CLUSTER KEYSLOT: {e}"))?;
        let nodes = cli(node.port, &["CLUSTER", "NODES"])?;
        for l in nodes.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let serves = f[8..].iter().any(|range| {
                let mut ends = range.splitn(2, '-').filter_map(|x| x.parse::<u16>().ok());
                match (ends.next(), ends.next()) {
                    (Some(a), Some(b)) => (a..=b).contains(&slot),
                    (Some(a), None) => a == slot,
                    _ => false,
                }
            });
            if serves {
                return f[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| format!("CLUSTER NODES: {l}"));
            }
        }
        Err(format!("no master serves slot {slot}:\n{nodes}"))
    }

    /// Kills the node on `port` (SIGKILL).
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            n.stop();
        }
    }
}

/// Redis Sentinel on loopback: a master, one replica, and three sentinels monitoring
/// the master as `master_name` (quorum 2, down after one second). Stopped when dropped.
pub struct RedisSentinels {
    pub master_name: String,
    pub servers: Vec<RedisServer>,
    pub sentinels: Vec<u16>,
    children: Vec<Child>,
    dir: PathBuf,
}

impl RedisSentinels {
    pub fn start() -> Result<RedisSentinels, String> {
        let master = RedisServer::start()?;
        let master_port = master.port.to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master_port])?;
        let mut set = RedisSentinels {
            master_name: "buckets".into(),
            servers: vec![master, replica],
            sentinels: Vec::new(),
            children: Vec::new(),
            dir: scratch_dir("sentinels", free_port())?,
        };
        wait_for("the replica did not sync with the master", 20, || {
            cli(set.servers[1].port, &["INFO", "replication"])
                .is_ok_and(|i| i.contains("master_link_status:up"))
        })?;
        for _ in 0..3 {
            let port = free_port();
            // Sentinel rewrites its configuration file: one each, in our directory.
            let conf = set.dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {name} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {name} 1000\n\
                     sentinel failover-timeout {name} 5000\n\
                     sentinel parallel-syncs {name} 1\n",
                    dir = set.dir.display(),
                    name = set.master_name,
                ),
            )
            .map_err(|e| e.to_string())?;
            let child = Command::new(redis_sentinel_binary())
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    format!(
                        "cannot start {}: {e} (install Debian's redis-sentinel; cargo xtask test does)",
                        redis_sentinel_binary()
                    )
                })?;
            set.children.push(child);
            set.sentinels.push(port);
        }
        // Ready once every sentinel knows the replica and the two other sentinels
        // (learnt from each other's hello messages, every two seconds).
        wait_for(
            "the sentinels did not find each other and the replica",
            30,
            || {
                set.sentinels.iter().all(|&p| {
                    cli(p, &["SENTINEL", "MASTER", &set.master_name]).is_ok_and(|m| {
                        let v: Vec<&str> = m.lines().collect();
                        let field = |k: &str| {
                            v.iter()
                                .position(|l| *l == k)
                                .and_then(|i| v.get(i + 1))
                                .copied()
                        };
                        field("num-slaves") == Some("1")
                            && field("num-other-sentinels") == Some("2")
                    })
                })
            },
        )?;
        Ok(set)
    }

    /// `redis://127.0.0.1:port` of every sentinel, comma-separated (what
    /// `--redis-sentinel` takes).
    pub fn urls(&self) -> String {
        self.sentinels
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The master's port, as the first sentinel that answers names it.
    pub fn master_port(&self) -> Result<u16, String> {
        let mut last = String::new();
        for &p in &self.sentinels {
            match cli(
                p,
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.master_name],
            ) {
                Ok(a) => {
                    if let Some(port) = a.lines().nth(1).and_then(|l| l.trim().parse().ok()) {
                        return Ok(port);
                    }
                    last = a;
                }
                Err(e) => last = e,
            }
        }
        Err(format!("no sentinel names the master: {last}"))
    }

    /// Kills the server on `port` (SIGKILL).
    pub fn kill(&mut self, port: u16) {
        if let Some(s) = self.servers.iter_mut().find(|s| s.port == port) {
            s.stop();
        }
    }
}

impl Drop for RedisSentinels {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
