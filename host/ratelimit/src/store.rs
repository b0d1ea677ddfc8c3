//! The buckets in Redis: where they live ([`Topology`]: one Redis, a Redis Cluster, or
//! the master a set of Sentinels names), the connection to it, and the script.
//!
//! Until Redis is reachable, and whenever it does not answer in time, a call fails
//! with UNAVAILABLE; the service keeps running and reconnects by itself:
//! - one Redis: a connection manager that reconnects to the same address;
//! - a cluster: the `redis` crate's cluster client, which follows MOVED and ASK
//!   redirections, refreshes its slot map after a failover, and reconnects to nodes;
//! - Sentinel: the master is asked of the sentinels at start, and again whenever the
//!   connection to it breaks, it answers READONLY (demoted to a replica) or it does
//!   not answer in time; calls answer UNAVAILABLE until the sentinels name a master
//!   that answers as one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, ConnectionInfo, IntoConnectionInfo, RedisError};
use tokio::sync::Notify;

use crate::{Bucket, BucketState, Failure};

const SCRIPT: &str = include_str!("bucket.lua");

/// Where the buckets are kept.
#[derive(Clone, PartialEq)]
pub enum Topology {
    /// One Redis: `redis://[:password@]host:port[/db]`.
    Single(String),
    /// A Redis Cluster, from some of its nodes (the others are learnt from them).
    Cluster(Vec<String>),
    /// The master that these sentinels name `master`.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Splits a comma-separated list of URLs, refusing empty items.
fn url_list(option: &str, list: &str) -> Result<Vec<String>, String> {
    let urls: Vec<String> = list.split(',').map(|u| u.trim().to_owned()).collect();
    if urls.iter().any(String::is_empty) {
        return Err(format!(
            "{option}: an empty URL in `{}` (give a comma-separated list of redis:// URLs)",
            redact(list)
        ));
    }
    Ok(urls)
}

fn parse_url(option: &str, url: &str) -> Result<ConnectionInfo, String> {
    url.into_connection_info()
        .map_err(|e| format!("{option}: `{}` is not a Redis URL: {e}", redact(url)))
}

impl Topology {
    /// The topology from the command line: exactly one of `--redis URL`,
    /// `--redis-cluster URL,URL,...` or `--redis-sentinel URL,URL,...` (with
    /// `--sentinel-master NAME`). Every URL is checked here, so a typo stops the
    /// service at start with the option and the URL (without its password) named.
    pub fn from_options(
        redis: Option<&str>,
        cluster: Option<&str>,
        sentinels: Option<&str>,
        master: Option<&str>,
    ) -> Result<Topology, String> {
        let topology = match (redis, cluster, sentinels) {
            (Some(url), None, None) => Topology::Single(url.trim().to_owned()),
            (None, Some(list), None) => Topology::Cluster(url_list("--redis-cluster", list)?),
            (None, None, Some(list)) => Topology::Sentinel {
                sentinels: url_list("--redis-sentinel", list)?,
                master: match master.map(str::trim) {
                    Some(m) if !m.is_empty() => m.to_owned(),
                    _ => {
                        return Err(
                            "--redis-sentinel needs --sentinel-master NAME (the name the sentinels monitor the master by)"
                                .into(),
                        );
                    }
                },
            },
            (None, None, None) => {
                return Err(
                    "where are the buckets? give --redis URL, --redis-cluster URL,URL,... or --redis-sentinel URL,URL,... --sentinel-master NAME"
                        .into(),
                );
            }
            _ => {
                return Err(
                    "give only one of --redis, --redis-cluster and --redis-sentinel".into(),
                );
            }
        };
        if master.is_some() && !matches!(topology, Topology::Sentinel { .. }) {
            return Err("--sentinel-master is for --redis-sentinel".into());
        }
        match &topology {
            Topology::Single(url) => {
                parse_url("--redis", url)?;
            }
            Topology::Cluster(urls) => {
                let infos = urls
                    .iter()
                    .map(|u| parse_url("--redis-cluster", u))
                    .collect::<Result<Vec<_>, _>>()?;
                if infos
                    .iter()
                    .any(|i| matches!(i.addr(), redis::ConnectionAddr::Unix(_)))
                {
                    return Err(
                        "--redis-cluster: cluster nodes are reached over TCP (the cluster announces host:port)".into(),
                    );
                }
                let first = infos[0].redis_settings();
                if infos.iter().any(|i| {
                    let r = i.redis_settings();
                    r.username() != first.username() || r.password() != first.password()
                }) {
                    return Err(
                        "--redis-cluster: every node URL must carry the same user and password"
                            .into(),
                    );
                }
                if infos.iter().any(|i| i.redis_settings().db() != 0) {
                    return Err(
                        "--redis-cluster: a cluster has only database 0; drop the /db from the URLs"
                            .into(),
                    );
                }
            }
            Topology::Sentinel { sentinels, .. } => {
                let infos = sentinels
                    .iter()
                    .map(|u| parse_url("--redis-sentinel", u))
                    .collect::<Result<Vec<_>, _>>()?;
                let first = infos[0].redis_settings();
                if infos.iter().any(|i| {
                    let r = i.redis_settings();
                    r.username() != first.username()
                        || r.password() != first.password()
                        || r.db() != first.db()
                }) {
                    return Err("--redis-sentinel: every sentinel URL must carry the same user, password and database".into());
                }
            }
        }
        Ok(topology)
    }

    /// For logs: the kind and the addresses, without passwords.
    pub fn describe(&self) -> String {
        let list = |urls: &[String]| urls.iter().map(|u| redact(u)).collect::<Vec<_>>().join(",");
        match self {
            Topology::Single(url) => redact(url),
            Topology::Cluster(urls) => format!("cluster {}", list(urls)),
            Topology::Sentinel { sentinels, master } => {
                format!("sentinel master `{master}` via {}", list(sentinels))
            }
        }
    }
}

/// The URL without a password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// A connection to where the buckets are.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    /// The current master a set of sentinels named; `generation` tells one master
    /// connection from the next, so a stale failure does not drop a newer one.
    Master {
        conn: MultiplexedConnection,
        generation: u64,
    },
}

#[derive(Clone)]
pub struct Store {
    topology: Arc<Topology>,
    timeout: Duration,
    conn: Arc<parking_lot::RwLock<Option<Conn>>>,
    /// Sentinel only: wakes the task that asks the sentinels for the master.
    rediscover: Option<Arc<Notify>>,
    script: Arc<redis::Script>,
    last_warning: Arc<parking_lot::Mutex<Option<Instant>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("redis", &self.topology.describe())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What the script is asked to do to a group of buckets: take (positive) or give back
/// (negative) this many tokens.
type Hits = i64;

/// Buckets whose keys hash to one cluster slot: one script call. In order of first
/// appearance, each with the indexes of its buckets in the request.
fn slot_groups(buckets: &[&Bucket]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Slot, Vec<usize>)> = Vec::new();
    for (i, b) in buckets.iter().enumerate() {
        let slot = Slot::for_key(&b.key);
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, g)) => g.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// Whether an error means the connection to the master is gone or it is no longer
/// the master: then the sentinels are asked again.
fn master_lost(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
                | redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown)
        )
}

impl Store {
    /// A store on `topology`; connects in the background, retrying until Redis
    /// answers. Must run inside a Tokio runtime.
    pub fn connect(topology: &Topology, timeout: Duration) -> Result<Store, String> {
        let connect_timeout = timeout.max(Duration::from_millis(500));
        let mut store = Store {
            topology: Arc::new(topology.clone()),
            timeout,
            conn: Arc::new(parking_lot::RwLock::new(None)),
            rediscover: None,
            script: Arc::new(redis::Script::new(SCRIPT)),
            last_warning: Arc::new(parking_lot::Mutex::new(None)),
        };
        let shown = topology.describe();
        match topology {
            Topology::Single(url) => {
                let client = redis::Client::open(url.as_str())
                    .map_err(|e| format!("redis url `{}`: {e}", redact(url)))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1);
                let slot = store.conn.clone();
                tokio::spawn(retry_until_connected(
                    shown,
                    move || {
                        let (client, config) = (client.clone(), config.clone());
                        async move {
                            ConnectionManager::new_with_config(client, config)
                                .await
                                .map(Conn::Single)
                        }
                    },
                    slot,
                ));
            }
            Topology::Cluster(urls) => {
                // Retries are the caller's: a call past the timeout answers
                // UNAVAILABLE; the client keeps its slot map and node connections.
                let client = ClusterClient::builder(urls.iter().map(String::as_str))
                    .connection_timeout(connect_timeout)
                    .response_timeout(timeout)
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()
                    .map_err(|e| format!("--redis-cluster: {e}"))?;
                let slot = store.conn.clone();
                tokio::spawn(retry_until_connected(
                    shown,
                    move || {
                        let client = client.clone();
                        async move { client.get_async_connection().await.map(Conn::Cluster) }
                    },
                    slot,
                ));
            }
            Topology::Sentinel { sentinels, master } => {
                let infos = sentinels
                    .iter()
                    .map(|u| parse_url("--redis-sentinel", u))
                    .collect::<Result<Vec<_>, _>>()?;
                let auth = infos[0].redis_settings().clone();
                let mut builder = SentinelClientBuilder::new(
                    infos.iter().map(|i| i.addr().clone()),
                    master,
                    SentinelServerType::Master,
                )
                .map_err(|e| format!("--redis-sentinel: {e}"))?
                .set_client_to_redis_db(auth.db());
                // The same credentials for the sentinels and the master they name.
                if let Some(u) = auth.username() {
                    builder = builder
                        .set_client_to_sentinel_username(u)
                        .set_client_to_redis_username(u);
                }
                if let Some(p) = auth.password() {
                    builder = builder
                        .set_client_to_sentinel_password(p)
                        .set_client_to_redis_password(p);
                }
                let sentinel = builder
                    .build()
                    .map_err(|e| format!("--redis-sentinel: {e}"))?;
                let wake = Arc::new(Notify::new());
                store.rediscover = Some(wake.clone());
                tokio::spawn(follow_master(
                    sentinel,
                    store.conn.clone(),
                    wake,
                    timeout,
                    connect_timeout,
                    shown,
                ));
            }
        }
        Ok(store)
    }

    fn warn(&self, what: &str) {
        // One line per second at most: a Redis outage must not flood the log.
        let mut last = self.last_warning.lock();
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::warn!(redis = %self.topology.describe(), "{what}");
        }
    }

    fn unavailable(&self, what: String) -> Failure {
        self.warn(&what);
        Failure::new(Failure::UNAVAILABLE, what)
    }

    /// After a failure on a sentinel-named master: drop that connection when the
    /// master is lost (calls answer UNAVAILABLE at once instead of waiting on it), and
    /// have the sentinels asked again.
    fn failed(&self, conn: &Conn, lost: bool) {
        let (Some(wake), Conn::Master { generation, .. }) = (&self.rediscover, conn) else {
            return;
        };
        if lost {
            let mut slot = self.conn.write();
            if matches!(&*slot, Some(Conn::Master { generation: g, .. }) if g == generation) {
                *slot = None;
            }
        }
        wake.notify_one();
    }

    /// Runs the script on the buckets at `indexes` (one slot).
    async fn run(
        &self,
        conn: &mut Conn,
        buckets: &[&Bucket],
        indexes: &[usize],
        hits: Hits,
    ) -> Result<(bool, Vec<BucketState>), Failure> {
        let mut inv = self.script.prepare_invoke();
        inv.arg(hits);
        for &i in indexes {
            let b = buckets[i];
            inv.key(&b.key[..]);
            inv.arg(b.limit.capacity).arg(b.rate);
        }
        let call = async {
            match conn {
                Conn::Single(c) => inv.invoke_async::<Vec<i64>>(c).await,
                Conn::Cluster(c) => inv.invoke_async::<Vec<i64>>(c).await,
                Conn::Master { conn: c, .. } => inv.invoke_async::<Vec<i64>>(c).await,
            }
        };
        let reply = match tokio::time::timeout(self.timeout, call).await {
            Err(_) => {
                self.failed(conn, false);
                return Err(self.unavailable(format!(
                    "redis did not answer within {} ms",
                    self.timeout.as_millis()
                )));
            }
            Ok(Err(e)) => {
                self.failed(conn, master_lost(&e));
                return Err(self.unavailable(format!("redis: {e}")));
            }
            Ok(Ok(r)) => r,
        };
        if reply.len() != 1 + 3 * indexes.len() {
            return Err(Failure::new(
                Failure::INTERNAL,
                format!("the bucket script returned {} values", reply.len()),
            ));
        }
        let n = |v: i64| v.max(0) as u64;
        let states = reply[1..]
            .chunks_exact(3)
            .map(|c| BucketState {
                remaining: n(c[0]),
                wait_us: n(c[1]),
                full_us: n(c[2]),
            })
            .collect();
        Ok((reply[0] == 1, states))
    }

    /// Takes `hits` from every bucket or from none.
    ///
    /// Buckets in one slot (always, outside a cluster) are taken atomically by one
    /// script call. When a request's buckets fall in several cluster slots, each slot's
    /// buckets are taken in turn, and if any slot refuses or fails, what the others
    /// took is given back: the request still counts everywhere or nowhere, and a
    /// concurrent request may meanwhile find those tokens gone (it is refused; nothing
    /// is ever admitted beyond a limit).
    pub async fn take(
        &self,
        buckets: &[&Bucket],
        hits: u32,
    ) -> Result<(bool, Vec<BucketState>), Failure> {
        let Some(mut conn) = self.conn.read().clone() else {
            return Err(self.unavailable("redis is not connected".into()));
        };
        let hits = Hits::from(hits);
        let groups = if matches!(conn, Conn::Cluster(_)) {
            slot_groups(buckets)
        } else {
            vec![(0..buckets.len()).collect()]
        };
        if let [only] = &groups[..] {
            return self.run(&mut conn, buckets, only, hits).await;
        }
        let mut states = vec![
            BucketState {
                remaining: 0,
                wait_us: 0,
                full_us: 0,
            };
            buckets.len()
        ];
        let mut taken: Vec<&[usize]> = Vec::new();
        let mut allowed = true;
        let mut failure = None;
        for g in &groups {
            match self.run(&mut conn, buckets, g, hits).await {
                Ok((ok, s)) => {
                    for (&i, s) in g.iter().zip(s) {
                        states[i] = s;
                    }
                    if ok {
                        taken.push(g);
                    } else {
                        allowed = false;
                    }
                }
                Err(f) => {
                    failure = Some(f);
                    break;
                }
            }
        }
        if !allowed || failure.is_some() {
            for g in taken {
                match self.run(&mut conn, buckets, g, -hits).await {
                    Ok((_, s)) => {
                        for (&i, s) in g.iter().zip(s) {
                            states[i] = s;
                        }
                    }
                    // Not given back: those buckets refill at their rate as ever.
                    Err(f) => self.warn(&format!(
                        "the tokens of a refused request were not given back: {}",
                        f.message
                    )),
                }
            }
        }
        match failure {
            Some(f) => Err(f),
            None => Ok((allowed, states)),
        }
    }
}

/// Connects with `connect` until it succeeds, then puts the connection in `slot`.
async fn retry_until_connected<F, Fut>(
    shown: String,
    connect: F,
    slot: Arc<parking_lot::RwLock<Option<Conn>>>,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Conn, RedisError>>,
{
    let mut announced = false;
    loop {
        match connect().await {
            Ok(c) => {
                tracing::info!(redis = %shown, "connected to redis");
                *slot.write() = Some(c);
                return;
            }
            Err(e) => {
                if !announced {
                    tracing::warn!(redis = %shown, error = %e, "redis unreachable; answering UNAVAILABLE and retrying");
                    announced = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Keeps `slot` on the master the sentinels name: asks them at start and whenever
/// woken (a call failed), connects to the master they name (the client checks that it
/// answers ROLE as a master) and replaces the connection.
async fn follow_master(
    mut sentinel: SentinelClient,
    slot: Arc<parking_lot::RwLock<Option<Conn>>>,
    wake: Arc<Notify>,
    timeout: Duration,
    connect_timeout: Duration,
    shown: String,
) {
    static GENERATION: AtomicU64 = AtomicU64::new(1);
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(timeout));
    let mut current: Option<String> = None;
    let mut announced = false;
    loop {
        // Sentinels, then the master: a few round trips, each bounded.
        let found = tokio::time::timeout(4 * connect_timeout, async {
            let client = sentinel.async_get_client().await?;
            let addr = client.get_connection_info().addr().to_string();
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            Ok::<_, RedisError>((addr, conn))
        })
        .await;
        match found {
            Ok(Ok((addr, conn))) => {
                if current.as_deref() != Some(addr.as_str()) {
                    tracing::info!(redis = %shown, master = %addr, "connected to redis master");
                    current = Some(addr);
                }
                announced = false;
                *slot.write() = Some(Conn::Master {
                    conn,
                    generation: GENERATION.fetch_add(1, Ordering::Relaxed),
                });
                wake.notified().await;
                // Failures come in bursts: one look for a burst.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => {
                if !announced {
                    let why = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "the sentinels or the master did not answer in time".into(),
                    };
                    tracing::warn!(redis = %shown, error = %why, "no redis master; answering UNAVAILABLE and asking the sentinels again");
                    announced = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limit, Unit};

    fn bucket(key: &[u8]) -> Bucket {
        Bucket {
            key: key.to_vec(),
            limit: Limit {
                unit: Unit::Second,
                requests_per_unit: 1,
                capacity: 1,
            },
            rate: 1e-6,
        }
    }

    #[test]
    fn one_of_the_three_stores_and_every_url_checked() {
        let t = |r, c, s, m| Topology::from_options(r, c, s, m);
        assert_eq!(
            t(Some("redis://127.0.0.1:6379"), None, None, None),
            Ok(Topology::Single("redis://127.0.0.1:6379".into()))
        );
        assert_eq!(
            t(None, Some("redis://a:7000, redis://b:7001"), None, None),
            Ok(Topology::Cluster(vec![
                "redis://a:7000".into(),
                "redis://b:7001".into()
            ]))
        );
        assert_eq!(
            t(
                None,
                None,
                Some("redis://s1:26379,redis://s2:26379"),
                Some("main")
            ),
            Ok(Topology::Sentinel {
                sentinels: vec!["redis://s1:26379".into(), "redis://s2:26379".into()],
                master: "main".into()
            })
        );
        let refused = [
            (t(None, None, None, None), "give --redis URL"),
            (
                t(Some("redis://a"), Some("redis://b"), None, None),
                "only one of",
            ),
            (
                t(None, None, Some("redis://s1:26379"), None),
                "needs --sentinel-master",
            ),
            (
                t(Some("redis://a"), None, None, Some("main")),
                "--sentinel-master is for --redis-sentinel",
            ),
            (
                t(None, Some("redis://a:1,,redis://b:2"), None, None),
                "an empty URL",
            ),
            (
                t(None, Some("redis://a:1,http://b:2"), None, None),
                "`http://b:2` is not a Redis URL",
            ),
            (
                t(Some("redis://:secret@a:1:2"), None, None, None),
                "is not a Redis URL",
            ),
            (
                t(None, Some("redis://:x@a:1,redis://:y@b:2"), None, None),
                "same user and password",
            ),
            (
                t(None, Some("redis://a:1/3"), None, None),
                "only database 0",
            ),
            (
                t(None, None, Some("redis://:x@s1:1,redis://s2:2"), Some("m")),
                "same user, password and database",
            ),
        ];
        for (got, want) in refused {
            let e = got.expect_err(want);
            assert!(e.contains(want), "`{e}` should say `{want}`");
            assert!(!e.contains("secret"), "passwords are not shown: {e}");
        }
    }

    #[test]
    fn buckets_are_grouped_by_the_slot_of_their_hash_tag() {
        let keys: [&[u8]; 4] = [b"p:{aa}1", b"p:{bb}2", b"p:{aa}3", b"p:{bb}4"];
        let buckets: Vec<Bucket> = keys.iter().map(|k| bucket(k)).collect();
        let refs: Vec<&Bucket> = buckets.iter().collect();
        assert_eq!(slot_groups(&refs), vec![vec![0, 2], vec![1, 3]]);
        assert_eq!(slot_groups(&refs[..1]), vec![vec![0]]);
    }

    #[test]
    fn a_lost_master_is_a_broken_connection_or_a_demoted_one() {
        let readonly = RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
            "READONLY",
        ));
        assert!(master_lost(&readonly));
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(master_lost(&io));
        let script = RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "ERR in script",
        ));
        assert!(!master_lost(&script));
    }
}
