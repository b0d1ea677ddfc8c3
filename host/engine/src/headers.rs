//! The header map a filter sees, with Envoy's semantics: names are lower-cased on the
//! way in, lookups ignore case, a get returns the first value, a replace leaves one.
//!
//! Names and values live in one byte buffer, so building a map of n headers costs two
//! allocations instead of 2n: maps are built and taken apart on every request that
//! runs filters. A replaced value is appended and the old bytes left behind; the
//! buffer is compacted once the dead bytes outweigh the live ones, so a filter that
//! replaces a header in a loop cannot grow it without bound.
//!
//! An embedder that built the map from its own (the gateway, from hyper's) asks
//! `changes()` what the filters did: nothing; the names they added, replaced or
//! removed, so that it gives its own map only those; or more, and it rebuilds its map.

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
    /// What changed since the last `mark_unchanged` (a new map counts as changed whole).
    change: Change,
    /// While `change` is `Names`: the names added, replaced or removed since
    /// `mark_unchanged`, lower-case, each after its length in one byte, each once.
    touched: Vec<u8>,
    /// While `change` is `Names`: whether a name was removed (`set` dropping a name's
    /// later values is not a removal), and how many entries at the front are ones the
    /// map had at `mark_unchanged`, in their places (everything after was added).
    removed: bool,
    original: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Change {
    None,
    Names,
    #[default]
    Whole,
}

/// The most bytes of touched names kept before the change counts as whole: a filter
/// touching many names gets the map rebuilt, and the list cannot grow without bound.
const TOUCHED_MAX: usize = 512;

/// What changed in a map since `mark_unchanged`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changes<'a> {
    None,
    /// Only the headers of these names changed; every other name has the values it
    /// had, in its place.
    Names {
        names: TouchedNames<'a>,
        /// Whether one of them was removed (as opposed to added to or replaced).
        removed: bool,
        /// How many entries at the front of the map it had at `mark_unchanged`, in
        /// their places: a touched name whose first entry is among them keeps its
        /// place, any other was added at the end.
        original: usize,
    },
    /// Anything more: the map cleared or replaced, or many names changed.
    Whole,
}

/// The names of `Changes::Names`: lower-case, each once, in the order first touched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TouchedNames<'a>(&'a [u8]);

impl<'a> Iterator for TouchedNames<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        let (&len, rest) = self.0.split_first()?;
        let (name, rest) = rest.split_at(usize::from(len).min(rest.len()));
        self.0 = rest;
        // Names are written by `push_name`, which only writes UTF-8.
        Some(std::str::from_utf8(name).unwrap_or(""))
    }
}

/// Records that `name` (lower-case) changed, in a map whose change is `change`.
fn touch(change: &mut Change, touched: &mut Vec<u8>, name: &[u8]) {
    match change {
        Change::Whole => return,
        Change::None => *change = Change::Names,
        Change::Names => {}
    }
    if TouchedNames(touched).any(|t| t.as_bytes() == name) {
        return;
    }
    match u8::try_from(name.len()) {
        Ok(len) if touched.len() + name.len() < TOUCHED_MAX => {
            touched.push(len);
            touched.extend_from_slice(name);
        }
        _ => {
            *change = Change::Whole;
            touched.clear();
        }
    }
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
            change: Change::Whole,
            touched: Vec::new(),
            removed: false,
            original: 0,
        }
    }

    /// Whether the map changed (an entry added, replaced or removed, or the map
    /// replaced whole) since `mark_unchanged`.
    pub fn is_changed(&self) -> bool {
        self.change != Change::None
    }

    /// What changed since `mark_unchanged`.
    pub fn changes(&self) -> Changes<'_> {
        match self.change {
            Change::None => Changes::None,
            Change::Names => Changes::Names {
                names: TouchedNames(&self.touched),
                removed: self.removed,
                original: self.original,
            },
            Change::Whole => Changes::Whole,
        }
    }

    /// Starts tracking changes from here.
    pub fn mark_unchanged(&mut self) {
        self.change = Change::None;
        self.touched.clear();
        self.removed = false;
        self.original = self.entries.len();
    }

    /// Records a change made from outside the map's own methods (the map replaced
    /// whole by another).
    pub fn mark_changed(&mut self) {
        self.change = Change::Whole;
        self.touched.clear();
        self.original = 0;
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
        let name = self.push_name(name.as_ref());
        let value = self.push_value(value.as_ref());
        self.live += name.1 + value.1;
        let entry = Entry { name, value };
        self.entries.push(entry);
        touch(&mut self.change, &mut self.touched, &self.buf[entry.name()]);
    }

    /// Sets `name` to one value: the first entry is replaced in place (so a pseudo-header
    /// keeps its position) and any others are removed; appended when absent.
    pub fn set(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
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
                let entry = Entry {
                    name: new_name,
                    value,
                };
                self.entries.push(entry);
                touch(&mut self.change, &mut self.touched, &self.buf[entry.name()]);
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
                        if j < self.original {
                            self.original -= 1;
                        }
                    } else {
                        j += 1;
                    }
                }
                touch(&mut self.change, &mut self.touched, &self.buf[name]);
                self.compact_if_sparse();
            }
        }
    }

    pub fn remove(&mut self, name: &str) {
        let buf = &self.buf;
        let base = self.original;
        let (mut dropped, mut first, mut at, mut original) = (0, None, 0, base);
        self.entries.retain(|e| {
            let hit = buf[e.name()].eq_ignore_ascii_case(name.as_bytes());
            if hit {
                dropped += e.size();
                first.get_or_insert(e.name());
                if at < base {
                    original -= 1;
                }
            }
            at += 1;
            !hit
        });
        if let Some(lowered) = first {
            self.original = original;
            self.removed = true;
            // The dropped name's bytes are still in the buffer until it is compacted.
            touch(&mut self.change, &mut self.touched, &self.buf[lowered]);
            self.live -= dropped;
            self.compact_if_sparse();
        }
    }

    pub fn clear(&mut self) {
        self.mark_changed();
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
    fn changed_names_are_listed_and_anything_more_is_whole() {
        let names = |m: &HeaderMap| match m.changes() {
            Changes::Names { names, .. } => names.map(str::to_owned).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        let mut m: HeaderMap = [("a", "1"), ("b", "2"), ("c", "3")].into_iter().collect();
        assert_eq!(m.changes(), Changes::Whole, "a map made here is new whole");
        m.mark_unchanged();
        assert_eq!(m.changes(), Changes::None);
        m.add("X-Consumer-Id", "alice");
        m.set("a", "9");
        m.add("x-consumer-id", "bob");
        m.set("new", "1");
        assert_eq!(names(&m), ["x-consumer-id", "a", "new"]);
        assert!(matches!(
            m.changes(),
            Changes::Names {
                removed: false,
                original: 3,
                ..
            }
        ));
        assert_eq!(m.clone().changes(), m.changes(), "a copy carries them");
        m.remove("B");
        assert_eq!(names(&m), ["x-consumer-id", "a", "new", "b"]);
        assert!(matches!(
            m.changes(),
            Changes::Names {
                removed: true,
                original: 2,
                ..
            }
        ));
        m.remove("new");
        assert!(
            matches!(m.changes(), Changes::Names { original: 2, .. }),
            "added, not original"
        );
        m.clear();
        assert_eq!(m.changes(), Changes::Whole);
        m.mark_unchanged();
        // More names than are worth listing: the map counts as changed whole.
        for i in 0..100 {
            m.add(format!("x-header-number-{i}"), "v");
        }
        assert_eq!(m.changes(), Changes::Whole);
        m.mark_unchanged();
        m.add("n".repeat(300), "v");
        assert_eq!(m.changes(), Changes::Whole, "a name too long to list");
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
