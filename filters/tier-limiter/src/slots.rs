//! Where buckets live: a fixed table of shared-data slots, so memory stays bounded
//! however many consumers come (Envoy never frees a shared-data key; a table of
//! `max_buckets` keys written over is the most it ever holds). An identity is placed
//! by a keyed hash and probes a few slots after its first; a slot holding another
//! identity whose buckets are full again (idle) is taken over. Updates are
//! compare-and-swap, so every worker of a host counts exactly.
//!
//! What an attacker cannot do here: choose where its identity lands (the hash is
//! keyed with a random per-host secret, [`hash_key`], that every VM of the host reads
//! from shared data), take over a slot whose owner is still counting (a slot carries
//! the time its owner's own plan makes it full again, so a requester's shorter plan
//! is never the judge), or store more than a fixed-size record per slot (a slot keeps
//! a 128-bit tag of its owner, not the identity itself, which may be a long header).

use std::hash::Hasher;

use siphasher::sip128::{Hasher128, SipHasher13};

use crate::bucket::{self, Buckets, Decision};
use crate::config::Plan;

/// A shared-data store with compare-and-swap (the host's, or a map in tests).
pub trait Store {
    /// The value and its CAS, `None` when absent.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Stores with `cas` (0: unconditionally); false on a CAS mismatch. As in
    /// proxy-wasm, a missing key accepts any `cas`.
    fn set(&self, key: &str, value: &[u8], cas: u32) -> bool;
}

const PROBES: u64 = 8;
const ATTEMPTS: usize = 16;

/// The secret that keys slot placement, the same for every VM of one host.
pub type HashKey = [u8; 16];

/// The CAS to create an absent key with. proxy-wasm has no create-if-absent: a missing
/// key accepts any CAS, and with CAS 0 a worker that saw the key absent would write
/// over the bucket another worker created since, losing what that one counted. Hosts
/// number writes with one counter (Envoy and ours), so a key created since we looked
/// has a CAS close to those just seen; one half the counter's range away from them
/// matches no such key, and a creation that lost the race fails like any CAS mismatch
/// and is retried on what the winner stored.
fn creation_cas(seen: Option<u32>) -> u32 {
    seen.unwrap_or(0).wrapping_add(1 << 31).max(1)
}

/// The host's hash key, stored under `name`: the one there, or, on the first start of
/// a host, a new one from `random` published there. Two VMs starting at once may both
/// draw one; each creates the key with a random CAS (proxy-wasm has no
/// create-if-absent, see [`creation_cas`]), so the second write finds the first's key
/// and fails (unless its 32 random bits equal the first write's CAS), and both read
/// back the one key that was stored. A value of the wrong size is replaced. `None`
/// when `random` gives nothing (no randomness, no limiter: a guessable key would let
/// anyone aim at another's slot) or the store keeps refusing.
pub fn hash_key(
    store: &dyn Store,
    name: &str,
    random: &mut dyn FnMut(&mut [u8]) -> bool,
) -> Option<HashKey> {
    for _ in 0..ATTEMPTS {
        let got = store.get(name);
        if let Some((v, _)) = &got
            && let Ok(key) = HashKey::try_from(v.as_slice())
        {
            return Some(key);
        }
        let mut fresh = [0u8; 20];
        if !random(&mut fresh) {
            return None;
        }
        let cas = match got {
            Some((_, cas)) => cas,
            None => u32::from_le_bytes([fresh[16], fresh[17], fresh[18], fresh[19]]).max(1),
        };
        // Won or lost, the next read says which key the host has.
        store.set(name, &fresh[..16], cas);
    }
    None
}

/// The 128-bit tag of `identity` under `plan`: its low 64 bits pick the first slot,
/// the whole tag names the slot's owner. SipHash-1-3 keyed with the host's secret:
/// without the key nobody can aim an identity at a chosen slot, and even with it a
/// second identity with the same 128-bit tag is out of reach.
pub fn tag(key: &HashKey, plan: &str, identity: &str) -> u128 {
    let mut h = SipHasher13::new_with_key(key);
    h.write(plan.as_bytes());
    h.write(&[0]);
    h.write(identity.as_bytes());
    h.finish128().as_u128()
}

/// A slot's record: the owner's tag, when its buckets are full again (by the owner's
/// plan), then the buckets. Fixed size for a plan: 32 bytes and 8 per window.
fn encode(tag: u128, full_at_ns: u64, b: &Buckets) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 + 8 * b.tokens.len());
    v.extend_from_slice(&tag.to_le_bytes());
    v.extend_from_slice(&full_at_ns.to_le_bytes());
    v.extend_from_slice(&b.last_ns.to_le_bytes());
    for t in &b.tokens {
        v.extend_from_slice(&t.to_le_bytes());
    }
    v
}

struct Slot {
    tag: u128,
    full_at_ns: u64,
    buckets: Buckets,
}

fn decode(v: &[u8]) -> Option<Slot> {
    if v.len() < 32 || !v.len().is_multiple_of(8) {
        return None;
    }
    let word = |i: usize| -> Option<[u8; 8]> { v.get(i..i + 8)?.try_into().ok() };
    let tag = u128::from_le_bytes(v.get(..16)?.try_into().ok()?);
    let full_at_ns = u64::from_le_bytes(word(16)?);
    let last_ns = u64::from_le_bytes(word(24)?);
    let tokens = v[32..]
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    Some(Slot {
        tag,
        full_at_ns,
        buckets: Buckets { last_ns, tokens },
    })
}

/// Outcome of one attempt at the table.
#[derive(Debug, PartialEq)]
pub enum Taken {
    Decided(Decision),
    /// Every probed slot holds another identity that is still counting: the first of
    /// them is free again in `retry_after` seconds. The caller answers as `on_full`
    /// says.
    Full {
        retry_after: u64,
    },
    /// CAS kept failing (workers racing on these slots): the caller answers as for
    /// a full table.
    Contended,
}

/// The key of slot `i` of the table `prefix`.
pub fn slot_key(prefix: &str, i: u64) -> String {
    let mut k = String::with_capacity(prefix.len() + 10);
    k.push_str(prefix);
    k.push_str(itoa::Buffer::new().format(i));
    k
}

/// Takes a token for `identity` under `plan` at `now_ns` from the table `prefix` of
/// `slots` slots, placed with `key`.
pub fn take(
    store: &dyn Store,
    prefix: &str,
    slots: u32,
    key: &HashKey,
    plan: &Plan,
    identity: &str,
    now_ns: u64,
) -> Taken {
    let tag = tag(key, &plan.name, identity);
    let start = tag as u64;
    let slots = u64::from(slots.max(1));
    for _ in 0..ATTEMPTS {
        let mut free: Option<(String, u32)> = None;
        let mut mine: Option<(String, u32, Buckets)> = None;
        let mut seen: Option<u32> = None;
        let mut first_free_again = u64::MAX;
        // Distinct slots only: a table smaller than the probes wraps onto itself.
        for i in 0..PROBES.min(slots) {
            let key = slot_key(prefix, start.wrapping_add(i) % slots);
            let got = store.get(&key);
            if let Some((_, cas)) = &got {
                seen = Some(*cas);
            }
            match got {
                None => {
                    // Absent: the CAS is chosen below, once every probe has been seen.
                    free.get_or_insert((key, 0));
                }
                Some((v, cas)) => match decode(&v) {
                    Some(s) if s.tag == tag => {
                        mine = Some((key, cas, s.buckets));
                        break;
                    }
                    // Idle by its owner's plan: as good as none.
                    Some(s) if now_ns >= s.full_at_ns => {
                        free.get_or_insert((key, cas));
                    }
                    Some(s) => first_free_again = first_free_again.min(s.full_at_ns),
                    None => {
                        free.get_or_insert((key, cas));
                    }
                },
            }
        }
        let (key, cas, state) = match (mine, free) {
            (Some((k, c, b)), _) => (k, c, Some(b)),
            (None, Some((k, 0))) => (k, creation_cas(seen), None),
            (None, Some((k, c))) => (k, c, None),
            (None, None) => {
                let wait_ns = first_free_again.saturating_sub(now_ns);
                return Taken::Full {
                    retry_after: wait_ns.div_ceil(1_000_000_000).max(1),
                };
            }
        };
        let (next, decision) = bucket::take(plan, state.as_ref(), now_ns);
        // A refused request leaves the stored state as it was (taking nothing); only an
        // admitted one writes.
        if !decision.allowed
            || store.set(&key, &encode(tag, bucket::full_at(plan, &next), &next), cas)
        {
            return Taken::Decided(decision);
        }
    }
    Taken::Contended
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Limit, Window};
    use std::cell::RefCell;
    use std::collections::HashMap;

    const K: HashKey = [7; 16];

    #[derive(Default)]
    struct Map(RefCell<HashMap<String, (Vec<u8>, u32)>>, RefCell<u32>);

    impl Store for Map {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.0.borrow().get(key).cloned()
        }
        fn set(&self, key: &str, value: &[u8], cas: u32) -> bool {
            let mut m = self.0.borrow_mut();
            if let Some((_, c)) = m.get(key) {
                if cas != 0 && cas != *c {
                    return false;
                }
            }
            *self.1.borrow_mut() += 1;
            let next = *self.1.borrow();
            m.insert(key.to_owned(), (value.to_vec(), next));
            true
        }
    }

    fn plan(limit: f64) -> Plan {
        Plan {
            name: "p".into(),
            limits: vec![Limit {
                window: Window::Minute,
                limit,
                capacity: limit,
            }],
        }
    }

    #[test]
    fn counts_per_identity() {
        let m = Map::default();
        let p = plan(3.0);
        let allowed =
            |id: &str| matches!(take(&m, "t/", 64, &K, &p, id, 0), Taken::Decided(d) if d.allowed);
        assert!(allowed("a") && allowed("a") && allowed("a"));
        assert!(!allowed("a"));
        assert!(allowed("b"), "another identity has its own buckets");
    }

    #[test]
    fn memory_stays_within_the_table_and_idle_slots_are_reused() {
        let m = Map::default();
        let p = plan(10.0);
        for i in 0..1000 {
            take(
                &m,
                "t/",
                16,
                &K,
                &p,
                &format!("consumer-{i}"),
                i as u64 * 60_000_000_000,
            );
        }
        assert!(
            m.0.borrow().len() <= 16,
            "never more keys than slots: {}",
            m.0.borrow().len()
        );
    }

    #[test]
    fn a_table_of_active_others_is_full_not_a_wrong_count() {
        let m = Map::default();
        let p = plan(10.0);
        for i in 0..8 {
            take(&m, "t/", 8, &K, &p, &format!("c{i}"), 0);
        }
        // Each took one of ten a minute: full again in 6 s.
        assert_eq!(
            take(&m, "t/", 8, &K, &p, "newcomer", 0),
            Taken::Full { retry_after: 6 }
        );
        assert!(matches!(
            take(&m, "t/", 8, &K, &p, "newcomer", 6_000_000_000),
            Taken::Decided(d) if d.allowed
        ));
    }

    fn hourly(limit: f64) -> Plan {
        Plan {
            name: "hourly".into(),
            limits: vec![Limit {
                window: Window::Hour,
                limit,
                capacity: limit,
            }],
        }
    }

    fn per_second(name: &str, limit: f64, windows: usize) -> Plan {
        let mut limits = vec![Limit {
            window: Window::Second,
            limit,
            capacity: limit,
        }];
        if windows > 1 {
            limits.push(Limit {
                window: Window::Day,
                limit: limit * 1000.0,
                capacity: limit * 1000.0,
            });
        }
        Plan {
            name: name.into(),
            limits,
        }
    }

    #[test]
    fn an_owner_is_judged_idle_by_its_own_plan_not_the_requesters() {
        const S: u64 = 1_000_000_000;
        // A requester with a short window, with as many windows as the owner's plan or
        // more: neither may find the owner's hour "full again" after a second.
        for requester in [per_second("fast", 100.0, 1), per_second("fast2", 100.0, 2)] {
            let m = Map::default();
            let owner = hourly(3.0);
            let allowed = |p: &Plan, id: &str, t: u64| matches!(take(&m, "t/", 1, &K, p, id, t), Taken::Decided(d) if d.allowed);
            for _ in 0..3 {
                assert!(allowed(&owner, "victim", 0));
            }
            assert!(!allowed(&owner, "victim", 0));
            assert_eq!(
                take(&m, "t/", 1, &K, &requester, "attacker", S),
                Taken::Full { retry_after: 3599 },
                "{}: the victim's slot is full again an hour after its last token",
                requester.name
            );
            assert!(!allowed(&owner, "victim", S), "not reset");
            // Once the owner's own plan has refilled it, the slot is anyone's.
            assert!(allowed(&requester, "attacker", 3600 * S));
        }
    }

    #[test]
    fn an_owner_finds_its_slot_past_others_and_is_never_reset_by_them() {
        // Identities of many plans in a small table at random-ish times: each one's
        // admissions never exceed what its own buckets allow, checked against the
        // token-bucket bound in every interval (a reset would exceed it).
        let plans = [
            hourly(3.0),
            per_second("a", 2.0, 1),
            per_second("b", 5.0, 2),
        ];
        let m = Map::default();
        let mut admitted: HashMap<(usize, u32), Vec<u64>> = HashMap::new();
        let mut t = 0u64;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t += (x % 4000) * 1_000_000;
            let (pi, who) = ((x >> 20) as usize % 3, (x >> 30) as u32 % 6);
            if let Taken::Decided(d) = take(&m, "t/", 8, &K, &plans[pi], &format!("c{who}"), t)
                && d.allowed
            {
                admitted.entry((pi, who)).or_default().push(t);
            }
        }
        for ((pi, _), times) in &admitted {
            for (a, &ta) in times.iter().enumerate() {
                for (b, &tb) in times.iter().enumerate().skip(a) {
                    for l in &plans[*pi].limits {
                        let most = l.capacity + (tb - ta) as f64 * l.rate_per_ns();
                        assert!(
                            (b - a + 1) as f64 <= most + 1e-6,
                            "{} admissions in {} ns under {:?}",
                            b - a + 1,
                            tb - ta,
                            l
                        );
                    }
                }
            }
        }
        assert!(
            admitted.len() > 12,
            "the run admitted many identities: {}",
            admitted.len()
        );
    }

    #[test]
    fn a_slot_is_a_fixed_size_whatever_the_identity() {
        let m = Map::default();
        let long = "k".repeat(70_000);
        assert!(
            matches!(take(&m, "t/", 4, &K, &plan(2.0), &long, 0), Taken::Decided(d) if d.allowed)
        );
        assert!(
            matches!(take(&m, "t/", 4, &K, &plan(2.0), &long, 0), Taken::Decided(d) if d.allowed)
        );
        assert!(
            matches!(take(&m, "t/", 4, &K, &plan(2.0), &long, 0), Taken::Decided(d) if !d.allowed)
        );
        let sizes: Vec<usize> = m.0.borrow().values().map(|(v, _)| v.len()).collect();
        assert_eq!(sizes, vec![40], "tag, full-at, last, one window");
    }

    #[test]
    fn the_key_decides_placement() {
        let slot = |k: &HashKey, id: &str| tag(k, "p", id) as u64 % 4096;
        let ids: Vec<String> = (0..64).map(|i| format!("id-{i}")).collect();
        let same = ids
            .iter()
            .filter(|id| slot(&K, id) == slot(&[8; 16], id))
            .count();
        assert!(same < 4, "another key, other slots ({same} of 64 alike)");
        // The tag reads `plan NUL identity` as one string (as the README documents).
        let mut h = SipHasher13::new_with_key(&K);
        h.write(b"p\0id-1");
        assert_eq!(tag(&K, "p", "id-1"), h.finish128().as_u128());
    }

    #[test]
    fn the_first_start_publishes_a_key_and_later_ones_read_it() {
        let m = Map::default();
        let mut draws = 0;
        let mut random = |b: &mut [u8]| {
            draws += 1;
            b.fill(draws);
            true
        };
        let first = hash_key(&m, "key", &mut random).expect("a key");
        assert_eq!(first, [1; 16]);
        assert_eq!(hash_key(&m, "key", &mut random), Some(first));
        assert_eq!(draws, 1, "the second VM drew nothing");
        // Nothing random, nothing published: no key rather than a guessable one.
        assert_eq!(hash_key(&Map::default(), "key", &mut |_| false), None);
        // A value of the wrong size is replaced.
        let bad = Map::default();
        bad.set("key", b"short", 0);
        assert_eq!(
            hash_key(&bad, "key", &mut |b| {
                b.fill(9);
                true
            }),
            Some([9; 16])
        );
    }

    /// A store where another VM publishes its key between our read and our write.
    struct Publishing<'a> {
        map: &'a Map,
        theirs: RefCell<Option<HashKey>>,
    }

    impl Store for Publishing<'_> {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.map.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: u32) -> bool {
            if let Some(k) = self.theirs.borrow_mut().take() {
                let seen = self.map.get(key).map(|(_, c)| c);
                self.map.set(key, &k, creation_cas(seen));
            }
            self.map.set(key, value, cas)
        }
    }

    #[test]
    fn two_vms_starting_at_once_agree_on_the_first_key_stored() {
        let m = Map::default();
        let racing = Publishing {
            map: &m,
            theirs: RefCell::new(Some([5; 16])),
        };
        let mine = hash_key(&racing, "key", &mut |b| {
            b.fill(1);
            true
        });
        assert_eq!(
            mine,
            Some([5; 16]),
            "the other VM's key, stored first, is the key"
        );
        assert_eq!(m.get("key").map(|(v, _)| v), Some(vec![5; 16]));
    }

    /// A store where, just before the first write lands, another worker's `take` runs
    /// on the same table: the race of two workers meeting a new identity at once.
    type OtherWorker<'a> = Box<dyn FnOnce(&Map) + 'a>;

    struct Racing<'a> {
        map: &'a Map,
        other: RefCell<Option<OtherWorker<'a>>>,
    }

    impl Store for Racing<'_> {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.map.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: u32) -> bool {
            if let Some(other) = self.other.borrow_mut().take() {
                other(self.map);
            }
            self.map.set(key, value, cas)
        }
    }

    #[test]
    fn a_bucket_created_by_another_worker_meanwhile_is_not_written_over() {
        let p = plan(2.0);
        for (theirs, size) in [("a", 64), ("b", 1)] {
            // Both workers see the slot absent; the other one creates it first (for the
            // same identity, or, in a table of one slot, for another).
            let m = Map::default();
            let racing = Racing {
                map: &m,
                other: RefCell::new(Some(Box::new(|m: &Map| {
                    take(m, "t/", size, &K, &p, theirs, 0);
                }))),
            };
            let first = take(&racing, "t/", size, &K, &p, "a", 0);
            if theirs == "a" {
                assert!(matches!(first, Taken::Decided(d) if d.allowed));
                // Both requests counted: the limit of 2 is reached.
                assert!(
                    matches!(take(&m, "t/", size, &K, &p, "a", 0), Taken::Decided(d) if !d.allowed)
                );
            } else {
                // The only slot now holds another active identity (one of two a minute
                // taken: full again in 30 s), and its bucket is intact.
                assert_eq!(first, Taken::Full { retry_after: 30 });
                assert!(
                    matches!(take(&m, "t/", size, &K, &p, "b", 0), Taken::Decided(d) if d.allowed)
                );
                assert!(
                    matches!(take(&m, "t/", size, &K, &p, "b", 0), Taken::Decided(d) if !d.allowed)
                );
            }
        }
    }

    #[test]
    fn corrupt_slots_are_taken_over() {
        let m = Map::default();
        for i in 0..8 {
            m.set(&format!("t/{i}"), b"\xff\xff garbage", 0);
        }
        assert!(
            matches!(take(&m, "t/", 8, &K, &plan(2.0), "a", 0), Taken::Decided(d) if d.allowed)
        );
    }
}
