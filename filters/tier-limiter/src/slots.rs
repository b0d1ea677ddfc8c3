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
    /// Stores with `cas` (0: only if absent... as proxy-wasm: a missing key accepts any);
    /// false on a CAS mismatch.
    fn set(&self, key: &str, value: &[u8], cas: u32) -> bool;
}

const PROBES: u64 = 8;
const ATTEMPTS: usize = 16;

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
        for i in 0..PROBES {
            let key = format!("{prefix}{}", (start.wrapping_add(i)) % u64::from(slots));
            match store.get(&key) {
                None => {
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

    #[test]
    fn corrupt_slots_are_taken_over() {
        let m = Map::default();
        for i in 0..8 {
            m.set(&format!("t/{i}"), b"\xff\xff garbage", 0);
        }
        assert!(matches!(take(&m, "t/", 8, &plan(2.0), "a", 0), Taken::Decided(d) if d.allowed));
    }
}
