//! A VM's HTTP contexts in a slab: a context is written once where it lives and read
//! there until its request ends, instead of being moved into a hash table and out
//! again; a context found by id is remembered, since one callback's host calls and the
//! stream around it ask for the same context over and over.

use std::collections::HashMap;

use crate::state::{ContextIds, HttpCtx};

/// No context has id 0 (root contexts start at 1, HTTP contexts after them).
const NONE: u32 = 0;

#[derive(Default)]
pub struct Contexts {
    /// Each slot's context id (meaningful while it holds a context) and context.
    slots: Vec<(u32, Option<HttpCtx>)>,
    /// Empty slots, reused before the slab grows.
    free: Vec<u32>,
    /// Context id to slot.
    index: HashMap<u32, u32, ContextIds>,
    /// The last context found, and its slot.
    last: (u32, u32),
}

impl Contexts {
    fn slot(&self, id: u32) -> Option<u32> {
        if id == NONE {
            return None;
        }
        if self.last.0 == id {
            return Some(self.last.1);
        }
        self.index.get(&id).copied()
    }

    pub fn get(&self, id: u32) -> Option<&HttpCtx> {
        let s = self.slot(id)?;
        self.slots[s as usize].1.as_ref()
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut HttpCtx> {
        let s = self.slot(id)?;
        self.last = (id, s);
        self.slots[s as usize].1.as_mut()
    }

    pub fn contains_key(&self, id: u32) -> bool {
        self.slot(id).is_some()
    }

    /// Adds the context `id` (which must not be live).
    pub fn insert(&mut self, id: u32, ctx: HttpCtx) {
        debug_assert!(id != NONE && !self.index.contains_key(&id));
        let s = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = (id, Some(ctx));
                s
            }
            None => {
                self.slots.push((id, Some(ctx)));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(id, s);
        self.last = (id, s);
    }

    pub fn remove(&mut self, id: u32) -> Option<HttpCtx> {
        let s = self.index.remove(&id)?;
        if self.last.0 == id {
            self.last = (NONE, 0);
        }
        self.free.push(s);
        let slot = &mut self.slots[s as usize];
        slot.0 = NONE;
        slot.1.take()
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn values(&self) -> impl Iterator<Item = &HttpCtx> {
        self.slots.iter().filter_map(|(_, c)| c.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn ctx(root: u32) -> HttpCtx {
        HttpCtx::new(
            root,
            Arc::new(crate::types::RequestInfo::default()),
            Default::default(),
            Default::default(),
        )
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32),
        Remove(u32),
        Find(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u32..1000).prop_map(Op::Insert),
            (0u32..80).prop_map(Op::Remove),
            (0u32..80).prop_map(Op::Find),
        ]
    }

    proptest! {
        /// The slab against a hash map, over any sequence of new contexts, lookups and
        /// removals (ids given out in order, as the VM does): every id finds its own
        /// context, a removed or unknown id none, and emptied slots are reused.
        #[test]
        fn the_slab_behaves_as_a_map_of_ids(ops in proptest::collection::vec(op(), 1..300)) {
            let mut slab = Contexts::default();
            let mut model: HashMap<u32, u32> = HashMap::new();
            let mut next = 2u32;
            let mut most = 0;
            for op in ops {
                match op {
                    Op::Insert(root) => {
                        slab.insert(next, ctx(root));
                        model.insert(next, root);
                        next += 1;
                    }
                    // Ids near the ones given out, so removals and lookups hit.
                    Op::Remove(k) => {
                        let id = next.saturating_sub(k);
                        prop_assert_eq!(slab.remove(id).map(|c| c.root), model.remove(&id));
                    }
                    Op::Find(k) => {
                        let id = next.saturating_sub(k);
                        let want = model.get(&id).copied();
                        prop_assert_eq!(slab.get(id).map(|c| c.root), want);
                        prop_assert_eq!(slab.get_mut(id).map(|c| c.root), want);
                        prop_assert_eq!(slab.contains_key(id), want.is_some());
                    }
                }
                most = most.max(model.len());
                prop_assert_eq!(slab.len(), model.len());
                prop_assert_eq!(slab.values().count(), model.len());
            }
            prop_assert!(slab.slots.len() <= most, "slots were not reused");
        }
    }
}
