//! State that filters share across every worker of one host: shared data (a key-value
//! store with compare-and-swap) and shared queues, both scoped by `vm_id` as in Envoy.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc::UnboundedSender;

use crate::abi::Status;

/// Shared data of every `vm_id`. Values never expire (Envoy never frees a key); a
/// filter that needs bounded memory overwrites or empties its own keys.
#[derive(Default, Debug)]
pub struct SharedData {
    inner: Mutex<SharedDataInner>,
}

#[derive(Default, Debug)]
struct SharedDataInner {
    next_cas: u32,
    by_vm: HashMap<String, HashMap<Vec<u8>, (Arc<[u8]>, u32)>>,
}

impl SharedData {
    /// The value and its CAS, or `NotFound`.
    pub fn get(&self, vm_id: &str, key: &[u8]) -> Result<(Arc<[u8]>, u32), Status> {
        let inner = self.inner.lock();
        inner
            .by_vm
            .get(vm_id)
            .and_then(|m| m.get(key))
            .cloned()
            .ok_or(Status::NotFound)
    }

    /// Stores `value`. A non-zero `cas` must match the key's current CAS, else
    /// `CasMismatch`; a missing key accepts any CAS (Envoy's behaviour).
    pub fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Result<(), Status> {
        let mut inner = self.inner.lock();
        inner.next_cas = inner.next_cas.wrapping_add(1).max(1);
        let next = inner.next_cas;
        // The vm_id's map exists after its first write: look it up without allocating.
        if !inner.by_vm.contains_key(vm_id) {
            inner.by_vm.insert(vm_id.to_owned(), HashMap::new());
        }
        let Some(map) = inner.by_vm.get_mut(vm_id) else {
            return Err(Status::InternalFailure);
        };
        match map.get_mut(key) {
            Some(entry) => {
                if cas != 0 && cas != entry.1 {
                    return Err(Status::CasMismatch);
                }
                *entry = (Arc::from(value), next);
            }
            None => {
                map.insert(key.to_vec(), (Arc::from(value), next));
            }
        }
        Ok(())
    }

    /// Every key of a `vm_id` (for the test bed and the admin page).
    pub fn keys(&self, vm_id: &str) -> Vec<Vec<u8>> {
        let inner = self.inner.lock();
        inner
            .by_vm
            .get(vm_id)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
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

#[derive(Default, Debug)]
pub struct SharedQueues {
    inner: Mutex<Vec<Queue>>,
}

#[derive(Debug)]
struct Queue {
    vm_id: String,
    name: String,
    items: VecDeque<Vec<u8>>,
    owner: Option<QueueOwner>,
}

/// Bound on queued items per queue, so a producer without a consumer cannot grow the
/// host without limit. Past it the oldest item is dropped: refusing the enqueue would
/// need a status the Rust SDK does not expect there, and it would panic.
const MAX_QUEUE_ITEMS: usize = 10_000;

impl SharedQueues {
    /// Registers (or re-registers) the queue `name` of `vm_id`; the newest registrant
    /// is notified of new items. Tokens are stable for the life of the host.
    pub fn register(&self, vm_id: &str, name: &str, owner: QueueOwner) -> u32 {
        let mut queues = self.inner.lock();
        if let Some(i) = queues
            .iter()
            .position(|q| q.vm_id == vm_id && q.name == name)
        {
            queues[i].owner = Some(owner);
            return i as u32 + 1;
        }
        queues.push(Queue {
            vm_id: vm_id.into(),
            name: name.into(),
            items: VecDeque::new(),
            owner: Some(owner),
        });
        queues.len() as u32
    }

    pub fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        let queues = self.inner.lock();
        queues
            .iter()
            .position(|q| q.vm_id == vm_id && q.name == name)
            .map(|i| i as u32 + 1)
    }

    pub fn enqueue(&self, token: u32, value: &[u8]) -> Result<(), Status> {
        let mut queues = self.inner.lock();
        let q = token
            .checked_sub(1)
            .and_then(|i| queues.get_mut(i as usize))
            .ok_or(Status::NotFound)?;
        if q.items.len() >= MAX_QUEUE_ITEMS {
            q.items.pop_front();
        }
        q.items.push_back(value.to_vec());
        if let Some(owner) = &q.owner {
            // A closed receiver means the owning VM is gone; the item stays queued for
            // whoever registers next.
            let _ = owner.notify.send(QueueReady {
                root_context_id: owner.root_context_id,
                token,
            });
        }
        Ok(())
    }

    /// The oldest item, `Empty` when there is none, `NotFound` for a bad token.
    pub fn dequeue(&self, token: u32) -> Result<Vec<u8>, Status> {
        let mut queues = self.inner.lock();
        let q = token
            .checked_sub(1)
            .and_then(|i| queues.get_mut(i as usize))
            .ok_or(Status::NotFound)?;
        q.items.pop_front().ok_or(Status::Empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_is_checked_and_missing_keys_accept_any() {
        let d = SharedData::default();
        assert_eq!(d.get("vm", b"k"), Err(Status::NotFound));
        d.set("vm", b"k", b"1", 777).unwrap();
        let (v, cas) = d.get("vm", b"k").unwrap();
        assert_eq!(&*v, b"1");
        assert_eq!(
            d.set("vm", b"k", b"2", cas.wrapping_add(1)),
            Err(Status::CasMismatch)
        );
        d.set("vm", b"k", b"2", cas).unwrap();
        assert_eq!(d.set("vm", b"k", b"3", cas), Err(Status::CasMismatch));
        d.set("vm", b"k", b"3", 0).unwrap();
        assert_eq!(d.get("other", b"k"), Err(Status::NotFound));
    }

    #[test]
    fn queues_notify_their_owner() {
        let q = SharedQueues::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let t = q.register(
            "vm",
            "jobs",
            QueueOwner {
                root_context_id: 1,
                notify: tx,
            },
        );
        assert_eq!(q.resolve("vm", "jobs"), Some(t));
        assert_eq!(q.resolve("vm", "other"), None);
        assert_eq!(q.dequeue(t), Err(Status::Empty));
        q.enqueue(t, b"a").unwrap();
        assert_eq!(
            rx.try_recv().unwrap(),
            QueueReady {
                root_context_id: 1,
                token: t
            }
        );
        assert_eq!(q.dequeue(t).unwrap(), b"a");
        assert_eq!(q.enqueue(99, b"x"), Err(Status::NotFound));
    }
}
