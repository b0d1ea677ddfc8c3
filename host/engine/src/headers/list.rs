//! An ordered list of header entries with Envoy's semantics: names are lower-cased on
//! the way in, lookups ignore case, a get returns the first value, a replace leaves
//! one in the first one's place. It holds what hyper's map cannot: the pseudo-headers,
//! and entries whose name or value HTTP does not allow.
//!
//! Names and values live in one byte buffer, so a list of n entries costs two
//! allocations instead of 2n. A replaced value is appended and the old bytes left
//! behind; the buffer is compacted once the dead bytes outweigh the live ones, so a
//! filter that replaces a header in a loop cannot grow it without bound.

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
pub struct List {
    buf: Vec<u8>,
    entries: Vec<Entry>,
    /// Bytes of the live names and values (the rest of `buf` is dead).
    live: usize,
}

impl List {
    /// A list with room for `entries` entries of `bytes` bytes in all.
    pub fn with_capacity(entries: usize, bytes: usize) -> Self {
        List {
            buf: Vec::with_capacity(bytes),
            entries: Vec::with_capacity(entries),
            live: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
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
        self.entries.push(Entry { name, value });
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
                // The later entries of the name go in one pass: removing them one by
                // one would move the rest of the list each time.
                let name = self.entries[i].name();
                let buf = &self.buf;
                let (mut k, mut dropped) = (0, 0);
                self.entries.retain(|e| {
                    let keep = k <= i || buf[e.name()] != buf[name.clone()];
                    k += 1;
                    if !keep {
                        dropped += e.size();
                    }
                    keep
                });
                self.live -= dropped;
                self.compact_if_sparse();
            }
        }
    }

    /// Removes every entry of `name`; whether there was one.
    pub fn remove(&mut self, name: &str) -> bool {
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
        if self.entries.len() == before {
            return false;
        }
        self.live -= dropped;
        self.compact_if_sparse();
        true
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_in_a_loop_does_not_grow_the_buffer() {
        let mut m = List::default();
        m.add("x-keep", "k");
        for i in 0..100_000 {
            m.set("x-counter", format!("{i:0>64}"));
        }
        assert!(m.buf.len() < 2 * m.live + 4096 + 128, "{}", m.buf.len());
        assert_eq!(m.get("x-keep"), Some(&b"k"[..]));
        assert_eq!(
            m.get("x-counter"),
            Some(format!("{:0>64}", 99_999).as_bytes())
        );
    }
}
