//! Where buckets live: a fixed table of shared-data slots, so memory stays bounded
//! however many consumers come (Envoy never frees a shared-data key; a table of
//! `max_buckets` keys written over is the most it ever holds). An identity hashes to a
//! slot and probes a few after it; a slot holding another identity whose buckets are
//! full again (idle) is taken over. Updates are compare-and-swap, so every worker of
//! a host counts exactly.

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

/// FNV-1a: stable across VMs and workers (a keyed hash would differ per VM).
fn hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn encode(id: &str, b: &Buckets) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + id.len() + 8 + 8 * b.tokens.len());
    v.extend_from_slice(&(id.len() as u16).to_le_bytes());
    v.extend_from_slice(id.as_bytes());
    v.extend_from_slice(&b.last_ns.to_le_bytes());
    for t in &b.tokens {
        v.extend_from_slice(&t.to_le_bytes());
    }
    v
}

fn decode(v: &[u8]) -> Option<(&str, Buckets)> {
    let n = u16::from_le_bytes(v.get(..2)?.try_into().ok()?) as usize;
    let id = std::str::from_utf8(v.get(2..2 + n)?).ok()?;
    let rest = v.get(2 + n..)?;
    let last_ns = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
    let tokens = rest[8..]
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    Some((id, Buckets { last_ns, tokens }))
}

/// Outcome of one attempt at the table.
#[derive(Debug, PartialEq)]
pub enum Taken {
    Decided(Decision),
    /// Every probed slot holds an active other identity, or CAS kept failing: the
    /// caller decides (we let the request through and count it).
    Contended,
}

/// Takes a token for `identity` under `plan` at `now_ns` from the table `prefix`.
pub fn take(
    store: &dyn Store,
    prefix: &str,
    slots: u32,
    plan: &Plan,
    identity: &str,
    now_ns: u64,
) -> Taken {
    let id = format!("{}\u{0}{identity}", plan.name);
    let start = hash(&id);
    for _ in 0..ATTEMPTS {
        let mut free: Option<(String, u32)> = None;
        let mut mine: Option<(String, u32, Buckets)> = None;
        let mut seen: Option<u32> = None;
        for i in 0..PROBES {
            let key = format!("{prefix}{}", (start.wrapping_add(i)) % u64::from(slots));
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
                    Some((owner, b)) if owner == id => {
                        mine = Some((key, cas, b));
                        break;
                    }
                    Some((_, b))
                        if bucket::idle(&plan.limits, &b, now_ns)
                            || b.tokens.len() != plan.limits.len() =>
                    {
                        free.get_or_insert((key, cas));
                    }
                    None => {
                        free.get_or_insert((key, cas));
                    }
                    Some(_) => {}
                },
            }
        }
        let (key, cas, state) = match (mine, free) {
            (Some((k, c, b)), _) => (k, c, Some(b)),
            (None, Some((k, 0))) => (k, creation_cas(seen), None),
            (None, Some((k, c))) => (k, c, None),
            (None, None) => return Taken::Contended,
        };
        let (next, decision) = bucket::take(plan, state.as_ref(), now_ns);
        // A refused request leaves the stored state as it was (taking nothing); only an
        // admitted one writes.
        if !decision.allowed || store.set(&key, &encode(&id, &next), cas) {
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
            |id: &str| matches!(take(&m, "t/", 64, &p, id, 0), Taken::Decided(d) if d.allowed);
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
    fn a_table_of_active_others_is_contended_not_a_wrong_count() {
        let m = Map::default();
        let p = plan(10.0);
        for i in 0..8 {
            take(&m, "t/", 8, &p, &format!("c{i}"), 0);
        }
        assert_eq!(take(&m, "t/", 8, &p, "newcomer", 0), Taken::Contended);
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
                    take(m, "t/", size, &p, theirs, 0);
                }))),
            };
            let first = take(&racing, "t/", size, &p, "a", 0);
            if theirs == "a" {
                assert!(matches!(first, Taken::Decided(d) if d.allowed));
                // Both requests counted: the limit of 2 is reached.
                assert!(
                    matches!(take(&m, "t/", size, &p, "a", 0), Taken::Decided(d) if !d.allowed)
                );
            } else {
                // The only slot now holds another active identity: contended, and its
                // bucket is intact (one of two taken).
                assert_eq!(first, Taken::Contended);
                assert!(matches!(take(&m, "t/", size, &p, "b", 0), Taken::Decided(d) if d.allowed));
                assert!(
                    matches!(take(&m, "t/", size, &p, "b", 0), Taken::Decided(d) if !d.allowed)
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
        assert!(matches!(take(&m, "t/", 8, &plan(2.0), "a", 0), Taken::Decided(d) if d.allowed));
    }
}
