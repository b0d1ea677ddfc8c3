//! State that filters share across every worker of one host: shared data (a key-value
//! store with compare-and-swap) and shared queues, both scoped by `vm_id` as in Envoy.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc::UnboundedSender;

use crate::abi::Status;
use crate::limits::{HostLimits, Limit, Refusal};

/// Shared data of every `vm_id`. Values never expire (Envoy never frees a key); what a
/// `vm_id` holds is bounded instead by the host's limits on its keys and bytes, and a
/// filter that needs to stay well inside them overwrites or empties its own keys.
#[derive(Default, Debug)]
pub struct SharedData {
    inner: Mutex<SharedDataInner>,
}

#[derive(Default, Debug)]
struct SharedDataInner {
    next_cas: u32,
    by_vm: HashMap<String, VmData>,
}

#[derive(Default, Debug)]
struct VmData {
    entries: HashMap<Vec<u8>, (Arc<[u8]>, u32)>,
    /// Bytes of every key and value.
    bytes: usize,
}

impl SharedData {
    /// The value and its CAS, or `NotFound`.
    pub fn get(&self, vm_id: &str, key: &[u8]) -> Result<(Arc<[u8]>, u32), Status> {
        let inner = self.inner.lock();
        inner
            .by_vm
            .get(vm_id)
            .and_then(|m| m.entries.get(key))
            .cloned()
            .ok_or(Status::NotFound)
    }

    /// Stores `value`. A non-zero `cas` must match the key's current CAS, else
    /// `CasMismatch`; a missing key accepts any CAS (Envoy's behaviour). A key or value
    /// over its limit, or a write that would take the `vm_id` past its keys or bytes,
    /// is refused with the limit, and nothing is copied.
    pub fn set(
        &self,
        vm_id: &str,
        key: &[u8],
        value: &[u8],
        cas: u32,
        limits: &HostLimits,
    ) -> Result<(), Refusal> {
        if key.len() > limits.key_bytes {
            return Err(Limit::KeyBytes.into());
        }
        if value.len() > limits.value_bytes {
            return Err(Limit::ValueBytes.into());
        }
        let mut inner = self.inner.lock();
        let SharedDataInner { next_cas, by_vm } = &mut *inner;
        // The vm_id's map exists after its first write: look it up without allocating.
        if !by_vm.contains_key(vm_id) {
            by_vm.insert(vm_id.to_owned(), VmData::default());
        }
        let data = by_vm
            .get_mut(vm_id)
            .ok_or(Refusal::Status(Status::InternalFailure))?;
        let old = data.entries.get(key).map(|(v, c)| (v.len(), *c));
        let bytes = match old {
            Some((_, current)) if cas != 0 && cas != current => {
                return Err(Status::CasMismatch.into());
            }
            Some((len, _)) => data.bytes.saturating_sub(len) + value.len(),
            None => data.bytes + key.len() + value.len(),
        };
        if bytes > limits.shared_data_bytes {
            return Err(Limit::SharedDataBytes.into());
        }
        if old.is_none() && data.entries.len() >= limits.shared_data_keys {
            return Err(Limit::SharedDataKeys.into());
        }
        *next_cas = next_cas.wrapping_add(1).max(1);
        let entry = (Arc::from(value), *next_cas);
        match data.entries.get_mut(key) {
            Some(e) => *e = entry,
            None => {
                data.entries.insert(key.to_vec(), entry);
            }
        }
        data.bytes = bytes;
        Ok(())
    }

    /// Every key of a `vm_id` (for the test bed and the admin page).
    pub fn keys(&self, vm_id: &str) -> Vec<Vec<u8>> {
        let inner = self.inner.lock();
        inner
            .by_vm
            .get(vm_id)
            .map(|m| m.entries.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Bytes of keys and values a `vm_id` holds.
    pub fn bytes(&self, vm_id: &str) -> usize {
        self.inner.lock().by_vm.get(vm_id).map_or(0, |m| m.bytes)
    }
}

/// Who hears that a queue has data: the root context that registered it, in its VM.
#[derive(Clone, Debug)]
pub struct QueueOwner {
    pub root_context_id: u32,
    pub notify: UnboundedSender<QueueReady>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct QueueReady {
    pub root_context_id: u32,
    pub token: u32,
}

/// What the queues of one `vm_id` hold.
#[derive(Copy, Clone, Default, Debug, PartialEq, Eq)]
pub struct QueuesHeld {
    pub queues: usize,
    pub items: usize,
    pub bytes: usize,
}

#[derive(Default, Debug)]
pub struct SharedQueues {
    inner: Mutex<Vec<Queue>>,
}

#[derive(Debug)]
struct Queue {
    vm_id: String,
    name: String,
    items: VecDeque<Vec<u8>>,
    /// Bytes of its items.
    bytes: usize,
    owner: Option<QueueOwner>,
    /// Notifications sent to the owner and not delivered yet: at most one per item, so
    /// a filter enqueueing in a loop cannot grow the owner's channel past its items.
    pending: usize,
}

/// What an accepted enqueue did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Enqueued {
    Added,
    /// The queue was at `queue_items`: its oldest item went to make room. Refusing
    /// would need a status the Rust SDK does not expect there (it would panic), and a
    /// queue nobody drains holds its newest items this way.
    DroppedOldest,
}

impl SharedQueues {
    /// Registers (or re-registers) the queue `name` of `vm_id`; the newest registrant
    /// is notified of new items. Tokens are stable for the life of the host. A new
    /// queue past the `vm_id`'s `queues`, or a name past `key_bytes`, is refused.
    pub fn register(
        &self,
        vm_id: &str,
        name: &str,
        owner: QueueOwner,
        limits: &HostLimits,
    ) -> Result<u32, Limit> {
        if name.len() > limits.key_bytes {
            return Err(Limit::KeyBytes);
        }
        let mut queues = self.inner.lock();
        if let Some(i) = queues
            .iter()
            .position(|q| q.vm_id == vm_id && q.name == name)
        {
            // What was sent to an earlier owner may never be delivered.
            queues[i].owner = Some(owner);
            queues[i].pending = 0;
            return Ok(i as u32 + 1);
        }
        if queues.iter().filter(|q| q.vm_id == vm_id).count() >= limits.queues {
            return Err(Limit::Queues);
        }
        queues.push(Queue {
            vm_id: vm_id.into(),
            name: name.into(),
            items: VecDeque::new(),
            bytes: 0,
            owner: Some(owner),
            pending: 0,
        });
        Ok(queues.len() as u32)
    }

    pub fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        let queues = self.inner.lock();
        queues
            .iter()
            .position(|q| q.vm_id == vm_id && q.name == name)
            .map(|i| i as u32 + 1)
    }

    /// Adds `value` to the queue `token`: `NotFound` for a bad token; an item past
    /// `value_bytes`, or one that would take the queues of the queue's `vm_id` past
    /// `queue_bytes`, is refused with the limit.
    pub fn enqueue(
        &self,
        token: u32,
        value: &[u8],
        limits: &HostLimits,
    ) -> Result<Enqueued, Refusal> {
        if value.len() > limits.value_bytes {
            return Err(Limit::ValueBytes.into());
        }
        let mut queues = self.inner.lock();
        let i = token
            .checked_sub(1)
            .map(|i| i as usize)
            .filter(|i| *i < queues.len())
            .ok_or(Status::NotFound)?;
        let vm_id = &queues[i].vm_id;
        let queued: usize = queues
            .iter()
            .filter(|q| q.vm_id == *vm_id)
            .map(|q| q.bytes)
            .sum();
        if queued + value.len() > limits.queue_bytes {
            return Err(Limit::QueueBytes.into());
        }
        let q = &mut queues[i];
        let mut outcome = Enqueued::Added;
        if q.items.len() >= limits.queue_items.max(1) {
            if let Some(old) = q.items.pop_front() {
                q.bytes -= old.len();
            }
            outcome = Enqueued::DroppedOldest;
        }
        q.items.push_back(value.to_vec());
        q.bytes += value.len();
        if let Some(owner) = q.owner.as_ref().filter(|_| q.pending < q.items.len()) {
            // A closed receiver means the owning VM is gone; the item stays queued for
            // whoever registers next.
            q.pending += 1;
            let _ = owner.notify.send(QueueReady {
                root_context_id: owner.root_context_id,
                token,
            });
        }
        Ok(outcome)
    }

    /// The oldest item, `Empty` when there is none, `NotFound` for a bad token.
    pub fn dequeue(&self, token: u32) -> Result<Vec<u8>, Status> {
        let mut queues = self.inner.lock();
        let q = token
            .checked_sub(1)
            .and_then(|i| queues.get_mut(i as usize))
            .ok_or(Status::NotFound)?;
        let item = q.items.pop_front().ok_or(Status::Empty)?;
        q.bytes -= item.len();
        Ok(item)
    }

    /// A notification of queue `token` reached its owner.
    pub fn delivered(&self, token: u32) {
        let mut queues = self.inner.lock();
        if let Some(q) = token
            .checked_sub(1)
            .and_then(|i| queues.get_mut(i as usize))
        {
            q.pending = q.pending.saturating_sub(1);
        }
    }

    /// Forgets the owner whose notifications go to `notify` (its VM is gone): the
    /// queues stay, with their items, for whoever registers them next.
    pub fn release(&self, notify: &UnboundedSender<QueueReady>) {
        for q in self.inner.lock().iter_mut() {
            if q.owner
                .as_ref()
                .is_some_and(|o| o.notify.same_channel(notify))
            {
                q.owner = None;
                q.pending = 0;
            }
        }
    }

    /// Queues a `vm_id` registered, and the items and bytes queued in them (what its
    /// `queues` and `queue_bytes` limits count; for the test bed and the admin page).
    pub fn held(&self, vm_id: &str) -> QueuesHeld {
        let queues = self.inner.lock();
        queues
            .iter()
            .filter(|q| q.vm_id == vm_id)
            .fold(QueuesHeld::default(), |h, q| QueuesHeld {
                queues: h.queues + 1,
                items: h.items + q.items.len(),
                bytes: h.bytes + q.bytes,
            })
    }

    /// Whether the queue `name` of `vm_id` has an owner to notify.
    pub fn has_owner(&self, vm_id: &str, name: &str) -> bool {
        self.inner
            .lock()
            .iter()
            .any(|q| q.vm_id == vm_id && q.name == name && q.owner.is_some())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lim() -> HostLimits {
        HostLimits::default()
    }

    #[test]
    fn cas_is_checked_and_missing_keys_accept_any() {
        let d = SharedData::default();
        let l = lim();
        assert_eq!(d.get("vm", b"k"), Err(Status::NotFound));
        d.set("vm", b"k", b"1", 777, &l).unwrap();
        let (v, cas) = d.get("vm", b"k").unwrap();
        assert_eq!(&*v, b"1");
        assert_eq!(
            d.set("vm", b"k", b"2", cas.wrapping_add(1), &l),
            Err(Status::CasMismatch.into())
        );
        d.set("vm", b"k", b"2", cas, &l).unwrap();
        assert_eq!(
            d.set("vm", b"k", b"3", cas, &l),
            Err(Status::CasMismatch.into())
        );
        d.set("vm", b"k", b"3", 0, &l).unwrap();
        assert_eq!(d.get("other", b"k"), Err(Status::NotFound));
    }

    #[test]
    fn a_vm_id_holds_what_its_limits_allow_and_no_more() {
        let d = SharedData::default();
        let l = HostLimits {
            shared_data_bytes: 100,
            shared_data_keys: 3,
            value_bytes: 40,
            key_bytes: 8,
            ..HostLimits::default()
        };
        assert_eq!(
            d.set("vm", &[b'k'; 9], b"", 0, &l),
            Err(Limit::KeyBytes.into())
        );
        assert_eq!(
            d.set("vm", b"k", &[0; 41], 0, &l),
            Err(Limit::ValueBytes.into())
        );
        for k in [b"a", b"b"] {
            d.set("vm", k, &[0; 40], 0, &l).unwrap();
        }
        assert_eq!(d.bytes("vm"), 82);
        // 82 + 1 + 18 = 101.
        assert_eq!(
            d.set("vm", b"c", &[0; 18], 0, &l),
            Err(Limit::SharedDataBytes.into())
        );
        d.set("vm", b"c", &[0; 16], 0, &l).unwrap();
        assert_eq!(
            d.set("vm", b"d", b"", 0, &l),
            Err(Limit::SharedDataKeys.into())
        );
        // Overwriting needs room only for what grows; another vm_id has its own.
        d.set("vm", b"a", &[1; 40], 0, &l).unwrap();
        d.set("vm", b"c", b"", 0, &l).unwrap();
        assert_eq!(d.bytes("vm"), 83);
        d.set("other", b"a", &[0; 40], 0, &l).unwrap();
        // A wrong CAS is a CAS failure even when the write would not fit either.
        let (_, cas) = d.get("vm", b"a").unwrap();
        assert_eq!(
            d.set("vm", b"a", &[0; 40], cas.wrapping_add(1), &l),
            Err(Status::CasMismatch.into())
        );
    }

    proptest! {
        /// Whatever a filter writes, the bytes counted are the bytes held, and they
        /// and the keys stay within the limits.
        #[test]
        fn accounting_matches_what_is_held(
            writes in proptest::collection::vec((0u8..12, 0usize..70, any::<bool>()), 1..200)
        ) {
            let d = SharedData::default();
            let l = HostLimits {
                shared_data_bytes: 300,
                shared_data_keys: 8,
                value_bytes: 60,
                key_bytes: 2,
                ..HostLimits::default()
            };
            for (k, len, with_cas) in writes {
                let key = [b'k', k];
                let cas = if with_cas {
                    d.get("vm", &key).map_or(0, |(_, c)| c)
                } else {
                    0
                };
                let before = d.bytes("vm");
                let r = d.set("vm", &key, &vec![k; len], cas, &l);
                if r.is_err() {
                    prop_assert_eq!(d.bytes("vm"), before, "a refused write changes nothing");
                }
                let keys = d.keys("vm");
                let held: usize = keys
                    .iter()
                    .map(|k| k.len() + d.get("vm", k).map_or(0, |(v, _)| v.len()))
                    .sum();
                prop_assert_eq!(d.bytes("vm"), held);
                prop_assert!(held <= l.shared_data_bytes);
                prop_assert!(keys.len() <= l.shared_data_keys);
            }
        }
    }

    fn owner(
        root_context_id: u32,
    ) -> (QueueOwner, tokio::sync::mpsc::UnboundedReceiver<QueueReady>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            QueueOwner {
                root_context_id,
                notify: tx,
            },
            rx,
        )
    }

    #[test]
    fn queues_notify_their_owner() {
        let q = SharedQueues::default();
        let l = lim();
        let (o, mut rx) = owner(1);
        let t = q.register("vm", "jobs", o, &l).unwrap();
        assert_eq!(q.resolve("vm", "jobs"), Some(t));
        assert_eq!(q.resolve("vm", "other"), None);
        assert_eq!(q.dequeue(t), Err(Status::Empty));
        assert_eq!(q.enqueue(t, b"a", &l), Ok(Enqueued::Added));
        assert_eq!(
            rx.try_recv().unwrap(),
            QueueReady {
                root_context_id: 1,
                token: t
            }
        );
        assert_eq!(q.dequeue(t).unwrap(), b"a");
        assert_eq!(q.enqueue(99, b"x", &l), Err(Status::NotFound.into()));
    }

    /// One notification per item waiting, at most: a filter enqueueing in a loop into
    /// a full queue (its oldest items dropped) does not grow the owner's channel.
    #[test]
    fn notifications_waiting_never_outnumber_the_items() {
        let q = SharedQueues::default();
        let l = HostLimits {
            queue_items: 10,
            ..lim()
        };
        let (o, mut rx) = owner(1);
        let t = q.register("vm", "jobs", o, &l).unwrap();
        for _ in 0..1000 {
            q.enqueue(t, b"x", &l).unwrap();
        }
        let waiting = std::iter::from_fn(|| rx.try_recv().ok()).count();
        assert_eq!(waiting, 10);
        // Once delivered, the next item is notified again.
        for _ in 0..waiting {
            q.delivered(t);
        }
        q.enqueue(t, b"x", &l).unwrap();
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn queues_of_a_vm_id_share_their_bytes_and_count() {
        let q = SharedQueues::default();
        let l = HostLimits {
            queues: 2,
            queue_bytes: 10,
            value_bytes: 6,
            queue_items: 3,
            key_bytes: 4,
            ..HostLimits::default()
        };
        let a = q.register("vm", "a", owner(1).0, &l).unwrap();
        let b = q.register("vm", "b", owner(1).0, &l).unwrap();
        assert_eq!(q.register("vm", "c", owner(1).0, &l), Err(Limit::Queues));
        assert_eq!(
            q.register("vm", "a", owner(2).0, &l),
            Ok(a),
            "re-registering needs no room"
        );
        assert_eq!(
            q.register("vm", "named", owner(1).0, &l),
            Err(Limit::KeyBytes)
        );
        assert!(q.register("other", "c", owner(1).0, &l).is_ok());
        assert_eq!(q.enqueue(a, &[0; 7], &l), Err(Limit::ValueBytes.into()));
        q.enqueue(a, &[0; 6], &l).unwrap();
        assert_eq!(q.enqueue(b, &[0; 5], &l), Err(Limit::QueueBytes.into()));
        q.enqueue(b, &[0; 4], &l).unwrap();
        q.dequeue(a).unwrap();
        // The dequeued bytes are free again; past 3 items the oldest goes.
        assert_eq!(q.enqueue(b, &[0; 1], &l), Ok(Enqueued::Added));
        assert_eq!(q.enqueue(b, &[0; 1], &l), Ok(Enqueued::Added));
        assert_eq!(q.enqueue(b, &[0; 1], &l), Ok(Enqueued::DroppedOldest));
        assert_eq!(q.dequeue(b).unwrap(), [0; 1], "the 4-byte item went");
        q.enqueue(a, &[0; 6], &l).unwrap();
        assert_eq!(
            q.held("vm"),
            QueuesHeld {
                queues: 2,
                items: 3,
                bytes: 8
            }
        );
        assert_eq!(
            q.held("other"),
            QueuesHeld {
                queues: 1,
                items: 0,
                bytes: 0
            }
        );
    }

    #[test]
    fn a_gone_owner_is_released_and_the_queue_kept() {
        let q = SharedQueues::default();
        let l = lim();
        let (o, rx) = owner(1);
        let notify = o.notify.clone();
        let t = q.register("vm", "jobs", o, &l).unwrap();
        q.enqueue(t, b"kept", &l).unwrap();
        drop(rx);
        q.release(&notify);
        assert!(!q.has_owner("vm", "jobs"));
        let (o, _rx) = owner(1);
        assert_eq!(q.register("vm", "jobs", o, &l), Ok(t));
        assert!(q.has_owner("vm", "jobs"));
        assert_eq!(q.dequeue(t).unwrap(), b"kept");
    }
}
