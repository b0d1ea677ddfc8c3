//! The buckets in Redis: one connection (multiplexed, reconnecting) and the script.
//! Until Redis is reachable, and whenever it does not answer in time, a call fails
//! with UNAVAILABLE; the service keeps running and reconnects by itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::RwLock;

use crate::{Bucket, BucketState, Failure};

const SCRIPT: &str = include_str!("bucket.lua");

#[derive(Clone)]
pub struct Store {
    url: String,
    timeout: Duration,
    conn: Arc<RwLock<Option<ConnectionManager>>>,
    script: Arc<redis::Script>,
    last_warning: Arc<parking_lot::Mutex<Option<Instant>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &redact(&self.url))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The URL without a password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

impl Store {
    /// A store for `url` (`redis://[:password@]host:port[/db]`); connects in the
    /// background, retrying until Redis answers. Must run inside a Tokio runtime.
    pub fn connect(url: &str, timeout: Duration) -> Result<Store, String> {
        let client =
            redis::Client::open(url).map_err(|e| format!("redis url `{}`: {e}", redact(url)))?;
        let store = Store {
            url: url.to_owned(),
            timeout,
            conn: Arc::new(RwLock::new(None)),
            script: Arc::new(redis::Script::new(SCRIPT)),
            last_warning: Arc::new(parking_lot::Mutex::new(None)),
        };
        let slot = store.conn.clone();
        let shown = redact(url);
        tokio::spawn(async move {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1);
            let mut announced = false;
            loop {
                match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                    Ok(c) => {
                        tracing::info!(redis = %shown, "connected to redis");
                        *slot.write().await = Some(c);
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
        });
        Ok(store)
    }

    fn warn(&self, what: &str) {
        // One line per second at most: a Redis outage must not flood the log.
        let mut last = self.last_warning.lock();
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::warn!(redis = %redact(&self.url), "{what}");
        }
    }

    fn unavailable(&self, what: String) -> Failure {
        self.warn(&what);
        Failure::new(Failure::UNAVAILABLE, what)
    }

    /// Takes `hits` from every bucket or from none, atomically.
    pub async fn take(
        &self,
        buckets: &[&Bucket],
        hits: u32,
    ) -> Result<(bool, Vec<BucketState>), Failure> {
        let Some(mut conn) = self.conn.read().await.clone() else {
            return Err(self.unavailable("redis is not connected".into()));
        };
        let mut inv = self.script.prepare_invoke();
        inv.arg(hits);
        for b in buckets {
            inv.key(&b.key[..]);
            inv.arg(b.limit.capacity).arg(b.rate);
        }
        let reply: Vec<i64> =
            match tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn)).await {
                Err(_) => {
                    return Err(self.unavailable(format!(
                        "redis did not answer within {} ms",
                        self.timeout.as_millis()
                    )));
                }
                Ok(Err(e)) => return Err(self.unavailable(format!("redis: {e}"))),
                Ok(Ok(r)) => r,
            };
        if reply.len() != 1 + 3 * buckets.len() {
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
}
