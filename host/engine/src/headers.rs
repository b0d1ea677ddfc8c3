//! The header map a filter sees, with Envoy's semantics: names are lower-cased on the
//! way in, lookups ignore case, a get returns the first value, a replace leaves one.
//!
//! Names and values live in one byte buffer, so building a map of n headers costs two
//! allocations instead of 2n: maps are built and taken apart on every request that
//! runs filters. A replaced value is appended and the old bytes left behind; the
//! buffer is compacted once the dead bytes outweigh the live ones, so a filter that
//! replaces a header in a loop cannot grow it without bound.

use std::ops::Range;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    name: (usize, usize),
    value: (usize, usize),
}

impl Entry {
    fn name(&self) -> Range<usize> {
        self.name.0..self.name.0 + self.name.1
    }
    fn value(&self) -> Range<usize> {
        self.value.0..self.value.0 + self.value.1
    }
    fn size(&self) -> usize {
        self.name.1 + self.value.1
    }
}

/// An ordered multimap of header names (lower-case) to raw byte values.
#[derive(Clone, Default)]
pub struct HeaderMap {
    buf: Vec<u8>,
    entries: Vec<Entry>,
    /// Bytes of the live names and values (the rest of `buf` is dead).
    live: usize,
    /// Set by every change since the last `mark_unchanged`: an embedder that built the
    /// map from its own can keep its own when no filter changed anything.
    changed: bool,
}

impl HeaderMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// A map with room for `n` headers of typical size.
    pub fn with_capacity(n: usize) -> Self {
        HeaderMap {
            buf: Vec::with_capacity(n * 32),
            entries: Vec::with_capacity(n),
            live: 0,
            changed: false,
        }
    }

    /// Whether the map changed (an entry added, replaced or removed, or the map
    /// replaced whole) since `mark_unchanged`.
    pub fn is_changed(&self) -> bool {
        self.changed
    }

    /// Starts tracking changes from here.
    pub fn mark_unchanged(&mut self) {
        self.changed = false;
    }

    /// Records a change made from outside the map's own methods (the map replaced
    /// whole by another).
    pub fn mark_changed(&mut self) {
        self.changed = true;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn name_of(&self, e: &Entry) -> &str {
        // Names are written by `push_name`, which only writes UTF-8.
        std::str::from_utf8(&self.buf[e.name()]).unwrap_or("")
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + Clone {
        self.entries
            .iter()
            .map(|e| (self.name_of(e), &self.buf[e.value()]))
    }

    /// The pairs as bytes: what the ABI encodes, without checking names are UTF-8.
    pub fn iter_bytes(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.entries
            .iter()
            .map(|e| (&self.buf[e.name()], &self.buf[e.value()]))
    }

    fn matches(&self, e: &Entry, name: &[u8]) -> bool {
        self.buf[e.name()].eq_ignore_ascii_case(name)
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|e| self.matches(e, name.as_bytes()))
            .map(|e| &self.buf[e.value()])
    }

    /// The first value of `name` when it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.entries
            .iter()
            .filter(move |e| self.matches(e, name.as_bytes()))
            .map(|e| &self.buf[e.value()])
    }

    /// Appends `name` lower-cased (header names are tokens, ASCII; anything else is
    /// kept lossily rather than refused, as Envoy's map stores whatever bytes the
    /// filter gives it).
    fn push_name(&mut self, name: &[u8]) -> (usize, usize) {
        let at = self.buf.len();
        if name.is_ascii() {
            // The usual case, checked a word at a time and folded in one pass.
            self.buf.extend(name.iter().map(u8::to_ascii_lowercase));
        } else {
            self.buf.extend_from_slice(
                String::from_utf8_lossy(name)
                    .to_ascii_lowercase()
                    .as_bytes(),
            );
        }
        (at, self.buf.len() - at)
    }

    fn push_value(&mut self, value: &[u8]) -> (usize, usize) {
        let at = self.buf.len();
        self.buf.extend_from_slice(value);
        (at, value.len())
    }

    pub fn add(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.changed = true;
        let name = self.push_name(name.as_ref());
        let value = self.push_value(value.as_ref());
        self.live += name.1 + value.1;
        self.entries.push(Entry { name, value });
    }

    /// Sets `name` to one value: the first entry is replaced in place (so a pseudo-header
    /// keeps its position) and any others are removed; appended when absent.
    pub fn set(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.changed = true;
        let mark = self.buf.len();
        let new_name = self.push_name(name.as_ref());
        let lowered = mark..self.buf.len();
        let first = self
            .entries
            .iter()
            .position(|e| self.buf[e.name()] == self.buf[lowered.clone()]);
        match first {
            None => {
                let value = self.push_value(value.as_ref());
                self.live += new_name.1 + value.1;
                self.entries.push(Entry {
                    name: new_name,
                    value,
                });
            }
            Some(i) => {
                // The name is there already: the appended copy is not needed.
                self.buf.truncate(mark);
                let value = self.push_value(value.as_ref());
                let old = self.entries[i].value.1;
                self.entries[i].value = value;
                self.live = self.live + value.1 - old;
                let name = self.entries[i].name();
                let mut j = i + 1;
                while j < self.entries.len() {
                    if self.buf[self.entries[j].name()] == self.buf[name.clone()] {
                        self.live -= self.entries[j].size();
                        self.entries.remove(j);
                    } else {
                        j += 1;
                    }
                }
                self.compact_if_sparse();
            }
        }
    }

    pub fn remove(&mut self, name: &str) {
        let before = self.entries.len();
        let buf = &self.buf;
        let mut dropped = 0;
        self.entries.retain(|e| {
            let hit = buf[e.name()].eq_ignore_ascii_case(name.as_bytes());
            if hit {
                dropped += e.size();
            }
            !hit
        });
        if self.entries.len() != before {
            self.changed = true;
            self.live -= dropped;
            self.compact_if_sparse();
        }
    }

    pub fn clear(&mut self) {
        self.changed = true;
        self.buf.clear();
        self.entries.clear();
        self.live = 0;
    }

    /// Total bytes of names and values, the measure header limits use.
    pub fn byte_size(&self) -> usize {
        self.live
    }

    /// Rewrites the buffer with only the live bytes once the dead ones outweigh them.
    fn compact_if_sparse(&mut self) {
        if self.buf.len() <= 2 * self.live + 4096 {
            return;
        }
        let mut buf = Vec::with_capacity(self.live);
        for e in &mut self.entries {
            let n = buf.len();
            buf.extend_from_slice(&self.buf[e.name()]);
            let v = buf.len();
            buf.extend_from_slice(&self.buf[e.value()]);
            e.name.0 = n;
            e.value.0 = v;
        }
        self.buf = buf;
    }
}

impl PartialEq for HeaderMap {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for HeaderMap {}

impl std::fmt::Debug for HeaderMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(k, v)| (k, String::from_utf8_lossy(v))))
            .finish()
    }
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(K, V)> for HeaderMap {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut map = HeaderMap::with_capacity(iter.size_hint().0);
        for (k, v) in iter {
            map.add(k, v);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_change_and_only_a_change_is_recorded() {
        let built: HeaderMap = [("a", "1"), ("b", "2"), ("b", "3")].into_iter().collect();
        let fresh = || {
            let mut m = built.clone();
            m.mark_unchanged();
            m
        };
        let mut m = fresh();
        assert!(!m.is_changed());
        let _ = (m.get("a"), m.get_all("b").count(), m.len(), m.byte_size());
        m.remove("absent");
        assert!(!m.is_changed(), "reading, or removing what is not there");
        for change in [
            (|m: &mut HeaderMap| m.add("c", "4")) as fn(&mut HeaderMap),
            |m| m.set("a", "9"),
            |m| m.set("new", "1"),
            |m| m.remove("b"),
            |m| m.clear(),
            |m| {
                *m = HeaderMap::new();
                m.mark_changed();
            },
        ] {
            let mut m = fresh();
            change(&mut m);
            assert!(m.is_changed());
            // A copy carries the mark, as the fail-open copy of a map must.
            assert!(m.clone().is_changed());
        }
    }

    #[test]
    fn envoy_map_semantics() {
        let mut m: HeaderMap = [(":path", "/"), ("X-A", "1"), ("x-a", "2")]
            .into_iter()
            .collect();
        assert_eq!(m.get("x-A"), Some(&b"1"[..]));
        assert_eq!(m.get_all("x-a").count(), 2);
        m.set("X-A", "3");
        assert_eq!(m.get_all("x-a").collect::<Vec<_>>(), vec![&b"3"[..]]);
        m.set(":path", "/y");
        assert_eq!(m.iter().next(), Some((":path", &b"/y"[..])));
        m.remove("X-a");
        assert_eq!(m.len(), 1);
        assert_eq!(m.byte_size(), ":path".len() + 2);
    }

    #[test]
    fn replacing_in_a_loop_does_not_grow_the_buffer() {
        let mut m = HeaderMap::new();
        m.add("x-keep", "k");
        for i in 0..100_000 {
            m.set("x-counter", format!("{i:0>64}"));
        }
        assert!(m.buf.len() < 2 * m.live + 4096 + 128, "{}", m.buf.len());
        assert_eq!(m.get_str("x-keep"), Some("k"));
        assert_eq!(m.get_str("x-counter"), Some(&*format!("{:0>64}", 99_999)));
    }

    /// The model: a plain list of (lower-case name, value), Envoy's semantics spelled
    /// out the slow way.
    #[derive(Debug, Clone)]
    enum Op {
        Add(u8, Vec<u8>),
        Set(u8, Vec<u8>),
        Remove(u8),
        Clear,
    }

    fn name(i: u8) -> &'static str {
        ["a", "B", "x-Long-Header-Name", ":path", "a\u{e9}"][i as usize % 5]
    }

    fn op() -> impl Strategy<Value = Op> {
        let value = proptest::collection::vec(any::<u8>(), 0..40);
        prop_oneof![
            4 => (any::<u8>(), value.clone()).prop_map(|(n, v)| Op::Add(n, v)),
            4 => (any::<u8>(), value).prop_map(|(n, v)| Op::Set(n, v)),
            2 => any::<u8>().prop_map(Op::Remove),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_the_list_model(ops in proptest::collection::vec(op(), 0..200)) {
            let mut m = HeaderMap::new();
            let mut model: Vec<(String, Vec<u8>)> = Vec::new();
            for o in ops {
                match o {
                    Op::Add(n, v) => {
                        m.add(name(n), &v);
                        model.push((name(n).to_lowercase(), v));
                    }
                    Op::Set(n, v) => {
                        m.set(name(n), &v);
                        let k = name(n).to_lowercase();
                        match model.iter().position(|(x, _)| *x == k) {
                            Some(i) => {
                                model[i].1 = v;
                                let mut seen = false;
                                model.retain(|(x, _)| {
                                    if *x != k { return true; }
                                    let keep = !seen;
                                    seen = true;
                                    keep
                                });
                            }
                            None => model.push((k, v)),
                        }
                    }
                    Op::Remove(n) => {
                        m.remove(name(n));
                        let k = name(n).to_lowercase();
                        model.retain(|(x, _)| *x != k);
                    }
                    Op::Clear => {
                        m.clear();
                        model.clear();
                    }
                }
                let got: Vec<(String, Vec<u8>)> =
                    m.iter().map(|(k, v)| (k.to_owned(), v.to_vec())).collect();
                prop_assert_eq!(&got, &model);
                prop_assert_eq!(
                    m.byte_size(),
                    model.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
                );
                for i in 0..5u8 {
                    let k = name(i).to_lowercase();
                    prop_assert_eq!(
                        m.get(name(i)),
                        model.iter().find(|(x, _)| *x == k).map(|(_, v)| v.as_slice())
                    );
                }
            }
        }
    }
}
