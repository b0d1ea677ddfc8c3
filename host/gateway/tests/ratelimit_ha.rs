//! `portcullis ratelimit-service` past one Redis: a real Redis Cluster (three masters
//! with a replica each) and a real Sentinel set (a master, a replica, three
//! sentinels), started on loopback from Debian's `redis-server`, `redis-sentinel` and
//! `redis-cli`. One consumer's windows share a slot, consumers spread over the
//! masters, a request across slots still counts everywhere or nowhere, and a master
//! killed mid-run costs at most the hits of its last moments: the service answers
//! UNAVAILABLE until the replica has taken over, then OK again by itself.

mod common;

use std::time::{Duration, Instant};

use common::*;
use portcullis_clients::GrpcCluster;
use portcullis_engine::{GrpcCallRequest, HeaderMap};
use portcullis_ratelimit::bucket_key;
use portcullis_rls::{
    Code, METHOD, RateLimitDescriptor, RateLimitRequest, RateLimitResponse, SERVICE, Unit,
};
use portcullis_testbed::redis::{RedisCluster, RedisSentinels, cli};
use prost::Message;

const PREFIX: &str = "portcullis:rl:";
const UNAVAILABLE: u32 = 14;

/// A gRPC client of the service that keeps its connection.
struct Client {
    rt: tokio::runtime::Runtime,
    cluster: GrpcCluster,
}

impl Client {
    fn new(svc: &RatelimitService) -> Client {
        Client {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
            cluster: GrpcCluster::new(&svc.url(), Duration::from_secs(1))
                .expect("a gRPC client of the service"),
        }
    }

    /// The answer, or the gRPC status code of the failure.
    fn call(&self, req: &RateLimitRequest) -> Result<RateLimitResponse, u32> {
        self.rt
            .block_on(self.cluster.call(GrpcCallRequest {
                service: SERVICE.into(),
                method: METHOD.into(),
                initial_metadata: HeaderMap::new(),
                message: req.encode_to_vec(),
                timeout: Duration::from_secs(2),
            }))
            .map(|r| RateLimitResponse::decode(&r.message[..]).expect("a RateLimitResponse"))
            .map_err(|s| s.code)
    }
}

fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: "ha".into(),
        descriptors,
        hits_addend: 1,
    }
}

/// The tier-limiter's request for one consumer: a second and a day window.
fn consumer(identity: &str, second: u32, day: u32) -> RateLimitRequest {
    let window = |w: &str, n, unit| {
        RateLimitDescriptor::limited(
            &[("tier", "t"), ("identity", identity), ("window", w)],
            n,
            unit,
        )
    };
    request(vec![
        window("second", second, Unit::Second),
        window("day", day, Unit::Day),
    ])
}

fn key_of(req: &RateLimitRequest, i: usize) -> Vec<u8> {
    let d = &req.descriptors[i];
    let unit = Unit::try_from(d.limit.as_ref().expect("a limit").unit).expect("a unit");
    bucket_key(PREFIX, &req.domain, &d.entries, unit)
}

/// What Redis hashes for the slot: between the first `{` and the next `}`.
fn hash_tag(key: &[u8]) -> &[u8] {
    let open = key.iter().position(|&b| b == b'{').expect("a tag") + 1;
    let close = open + key[open..].iter().position(|&b| b == b'}').expect("closed");
    &key[open..close]
}

fn ok(r: &RateLimitResponse) -> bool {
    r.overall_code == Code::Ok as i32
}

/// The two failover runs take turns: each is a dozen Redis processes timed to the
/// second (node timeouts of one second, the service's Redis timeout), and on a
/// two-core machine running both at once can stall a node long enough to look like a
/// second failure.
static FAILOVERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One consumer's answers through a master's death: when each came, and the day
/// bucket's remaining tokens or the failure's gRPC code.
struct Run {
    answers: Vec<(Instant, Result<u32, u32>)>,
    killed_at: Instant,
}

/// Sends `req` 50 times a second, kills a master with `kill` after two seconds, and
/// goes on until the service has answered OK for half a second after an outage (or
/// for 30 s).
fn hits_through_a_kill(client: &Client, req: &RateLimitRequest, kill: impl FnOnce()) -> Run {
    let start = Instant::now();
    let mut kill = Some(kill);
    let mut killed_at = None;
    let mut answers = Vec::new();
    let mut tick = start;
    let (mut outage_seen, mut ok_since_outage) = (false, 0);
    loop {
        if killed_at.is_none() && start.elapsed() >= Duration::from_secs(2) {
            (kill.take().expect("killed once"))();
            killed_at = Some(Instant::now());
        }
        let answer = client.call(req).map(|r| {
            assert!(ok(&r), "the day bucket never runs out here: {r:?}");
            r.statuses[1].limit_remaining
        });
        if killed_at.is_some() {
            outage_seen |= answer.is_err();
            if outage_seen && answer.is_ok() {
                ok_since_outage += 1;
            }
        }
        answers.push((Instant::now(), answer));
        if ok_since_outage >= 25 || start.elapsed() > Duration::from_secs(32) {
            break;
        }
        tick += Duration::from_millis(20);
        std::thread::sleep(tick.saturating_duration_since(Instant::now()));
    }
    Run {
        answers,
        killed_at: killed_at.expect("killed"),
    }
}

/// What a failover must look like: OK or UNAVAILABLE only, UNAVAILABLE after the kill,
/// OK again by itself, and the day bucket short of at most the hits of the last second
/// before the kill (replication is asynchronous: those may not have reached the
/// replica). Returns (seconds without OK, tokens lost) for the record.
fn check_failover(what: &str, run: &Run) -> (f64, i64) {
    let killed = run.killed_at;
    for (t, a) in &run.answers {
        if let Err(code) = a {
            assert_eq!(
                *code,
                UNAVAILABLE,
                "{what}: a failure answers UNAVAILABLE ({:?} after the kill)",
                t.saturating_duration_since(killed)
            );
        }
    }
    let first_failure = run
        .answers
        .iter()
        .position(|(t, a)| *t > killed && a.is_err())
        .unwrap_or_else(|| {
            panic!("{what}: the service answered UNAVAILABLE while no master served the bucket")
        });
    let (before_at, before) = run.answers[..first_failure]
        .iter()
        .rev()
        .find_map(|(t, a)| a.ok().map(|r| (*t, r)))
        .expect("answers before the kill");
    let back = first_failure
        + run.answers[first_failure..]
            .iter()
            .position(|(_, a)| a.is_ok())
            .unwrap_or_else(|| panic!("{what}: the service answers OK again by itself"));
    let (back_at, after) = (
        run.answers[back].0,
        run.answers[back].1.expect("an OK answer"),
    );
    let relapses: Vec<String> = run.answers[back..]
        .iter()
        .filter(|(_, a)| a.is_err())
        .map(|(t, _)| format!("{:.2} s", t.saturating_duration_since(killed).as_secs_f64()))
        .collect();
    assert!(
        relapses.is_empty(),
        "{what}: once back ({:.2} s after the kill), the service keeps answering OK; it failed again at {relapses:?} after the kill",
        back_at.saturating_duration_since(killed).as_secs_f64()
    );
    // The hit answered at `back` took one token; any hit before it, answered or not,
    // may have taken one more, never fewer.
    let lost = i64::from(after) - (i64::from(before) - 1);
    let last_second = run
        .answers
        .iter()
        .filter(|(t, a)| {
            a.is_ok() && *t <= killed && killed.duration_since(*t) <= Duration::from_secs(1)
        })
        .count() as i64;
    let outage = back_at.duration_since(before_at).as_secs_f64();
    eprintln!(
        "{what}: {} answers, no OK for {outage:.2} s, day bucket {before} before the kill and {after} after ({lost:+} lost; {last_second} hits in the last second)",
        run.answers.len()
    );
    assert!(
        lost <= last_second,
        "{what}: the new master lost {lost} hits, more than the {last_second} of the last second before the kill"
    );
    (outage, lost)
}

#[test]
fn a_redis_cluster_keeps_a_consumers_windows_in_one_slot_and_survives_a_master_failover() {
    let _turn = FAILOVERS.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = RedisCluster::start().unwrap_or_else(|e| panic!("{e}"));
    let urls = cluster.urls();
    let svc =
        RatelimitService::start_with(&["--redis-cluster", &urls, "--redis-timeout-ms", "500"]);
    svc.wait_connected();
    let client = Client::new(&svc);

    // One consumer's windows: taken together or not at all, in one script, whichever
    // master holds them (the client follows MOVED to it).
    let req = consumer("ada", 2, 100);
    assert_eq!(hash_tag(&key_of(&req, 0)), hash_tag(&key_of(&req, 1)));
    assert_ne!(
        hash_tag(&key_of(&req, 0)),
        hash_tag(&key_of(&consumer("bob", 2, 100), 0))
    );
    for _ in 0..2 {
        assert!(ok(&client.call(&req).expect("the service answers")));
    }
    let r = client.call(&req).expect("the service answers");
    assert!(!ok(&r));
    assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(
        r.statuses[1].limit_remaining, 98,
        "the day window kept its token"
    );

    // Thirty consumers: their buckets spread over the three masters.
    for i in 0..30 {
        assert!(ok(&client
            .call(&consumer(&format!("c{i}"), 5, 100))
            .expect("the service answers")));
    }
    for m in cluster.masters() {
        let keys: u64 = cli(m, &["DBSIZE"])
            .expect("DBSIZE")
            .trim()
            .parse()
            .expect("DBSIZE is a number");
        assert!(keys > 0, "master {m} holds none of 31 consumers' buckets");
    }

    // Descriptors with nothing in common are in different slots (here on different
    // masters): when one refuses, the other gives its token back.
    let (tight, loose) = (0..100)
        .map(|i| {
            (
                RateLimitDescriptor::limited(&[("route", &format!("r{i}"))], 1, Unit::Hour),
                RateLimitDescriptor::limited(&[("client", "x")], 5, Unit::Hour),
            )
        })
        .find(|(a, b)| {
            let (ka, kb) = (
                bucket_key(PREFIX, "ha", &a.entries, Unit::Hour),
                bucket_key(PREFIX, "ha", &b.entries, Unit::Hour),
            );
            cluster
                .master_of(&ka)
                .expect("CLUSTER KEYSLOT and NODES name the master")
                != cluster
                    .master_of(&kb)
                    .expect("CLUSTER KEYSLOT and NODES name the master")
        })
        .expect("two descriptors on different masters");
    let both = request(vec![tight.clone(), loose.clone()]);
    assert!(ok(&client.call(&both).expect("the service answers")));
    let r = client.call(&both).expect("the service answers");
    assert!(!ok(&r), "the one-per-hour descriptor refuses: {r:?}");
    assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(r.statuses[1].code, Code::Ok as i32);
    assert_eq!(r.statuses[1].limit_remaining, 4, "given back");
    let r = client
        .call(&request(vec![loose]))
        .expect("the service answers");
    assert_eq!(
        r.statuses[0].limit_remaining, 3,
        "the refused request took nothing from the other slot"
    );

    // A master killed mid-run: its replica takes over, the service follows.
    let req = consumer("failover", 1000, 5000);
    let victim = cluster
        .master_of(&key_of(&req, 1))
        .expect("CLUSTER KEYSLOT and NODES name the master");
    let run = hits_through_a_kill(&client, &req, || cluster.kill(victim));
    check_failover("cluster", &run);
    assert!(
        !cluster.masters().contains(&victim),
        "the killed master is no longer serving"
    );
}

#[test]
fn sentinels_lead_the_service_to_the_new_master_after_a_failover() {
    let _turn = FAILOVERS.lock().unwrap_or_else(|e| e.into_inner());
    let mut set = RedisSentinels::start().unwrap_or_else(|e| panic!("{e}"));
    let urls = set.urls();
    let svc = RatelimitService::start_with(&[
        "--redis-sentinel",
        &urls,
        "--sentinel-master",
        &set.master_name,
        "--redis-timeout-ms",
        "500",
    ]);
    svc.wait_connected();
    let client = Client::new(&svc);
    let req = consumer("ada", 2, 100);
    for _ in 0..2 {
        assert!(ok(&client.call(&req).expect("the service answers")));
    }
    assert!(!ok(&client.call(&req).expect("the service answers")));

    let old = set.master_port().expect("a sentinel names the master");
    let req = consumer("failover", 1000, 5000);
    let run = hits_through_a_kill(&client, &req, || set.kill(old));
    check_failover("sentinel", &run);
    let new = set.master_port().expect("a sentinel names the master");
    assert_ne!(new, old, "the sentinels promoted the replica");
    assert!(
        svc.logged(&format!("127.0.0.1:{new}")),
        "the service says which master it follows:\n{}",
        svc.stderr_text()
    );
    // The consumer counted before the failover is still counted on the new master
    // (two hits taken, the third refused by its second window).
    assert_eq!(
        client
            .call(&consumer("ada", 2, 100))
            .expect("the service answers")
            .statuses[1]
            .limit_remaining,
        97
    );
}

#[test]
fn the_store_options_are_checked_at_start_with_clear_errors() {
    let cases: [(&[&str], &str); 6] = [
        (&[], "--redis"),
        (
            &[
                "--redis",
                "redis://127.0.0.1:1",
                "--redis-cluster",
                "redis://127.0.0.1:2",
            ],
            "only one of",
        ),
        (
            &["--redis-sentinel", "redis://127.0.0.1:1"],
            "--sentinel-master",
        ),
        (
            &[
                "--redis-cluster",
                "redis://127.0.0.1:1,,redis://127.0.0.1:2",
            ],
            "an empty URL",
        ),
        (
            &[
                "--redis-cluster",
                "redis://:hunter2@127.0.0.1:1,tcp://127.0.0.1:2",
            ],
            "is not a Redis URL",
        ),
        (
            &[
                "--redis-cluster",
                "redis://127.0.0.1:1",
                "--key-prefix",
                "rl:{x}:",
            ],
            "no braces",
        ),
    ];
    for (args, want) in cases {
        let out = std::process::Command::new(portcullis_testbed::built_binary("portcullis"))
            .args(["ratelimit-service", "--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .expect("portcullis runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} is refused");
        assert!(err.contains(want), "{args:?}: `{err}` should say `{want}`");
        assert!(!err.contains("hunter2"), "no password in errors: {err}");
    }
}
