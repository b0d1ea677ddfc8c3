//! The header map a filter sees, with Envoy's semantics: names are lower-cased on the
//! way in, lookups ignore case, a get returns the first value, a replace leaves one.
//!
//! The fields live in hyper's own map (`http::HeaderMap`): an embedder that speaks
//! HTTP with hyper moves the request's map in with [`HeaderMap::from_http`] and takes
//! it back with [`HeaderMap::fields`], so filters read and write the request's map and
//! nothing is converted on the way. Beside it, a small list holds what hyper's map
//! cannot: the pseudo-headers (`:method`, `:path`, `:status`...), and entries whose
//! name is not an HTTP token or whose value holds bytes HTTP forbids (Envoy's map
//! stores whatever a filter gives it; the embedder decides what to do with them, see
//! [`HeaderMap::uncarried`]).
//!
//! Order: the pseudo-headers first, in the order they came; then the fields in
//! hyper's order, the values of one name together and in the order they came; then
//! the uncarried entries. Within one name the order is always kept; between names it
//! can differ from the order of arrival, which HTTP leaves without meaning (RFC 9110,
//! 5.3). Every value of one name sits on one side, so a name's values keep their order
//! even when some of them cannot be carried.

mod list;

use http::{HeaderName, HeaderValue};
use list::List;

/// What one entry counts against a limit on a map's size beyond its name and value
/// ([`HeaderMap::held_bytes`]): about what the host keeps for it besides those bytes
/// (an entry of hyper's map, or of the side list). Without it, entries with an empty
/// name and value would cost a filter nothing against the limit.
pub const ENTRY_BYTES: usize = 32;

/// An ordered multimap of header names (lower-case) to raw byte values.
#[derive(Clone, Default)]
pub struct HeaderMap {
    /// Boxed, and absent while empty: a map moves into a filter's context and out again
    /// around every callback, and hyper's map alone is about 100 bytes.
    inner: Option<Box<Inner>>,
    /// Set by every change since the last `mark_unchanged`.
    changed: bool,
}

#[derive(Clone, Default)]
struct Inner {
    fields: http::HeaderMap,
    /// The pseudo-headers and the entries `fields` cannot hold.
    side: List,
    /// At least the map's size in bytes, once [`HeaderMap::fits`] has measured it:
    /// every addition and replacement raises it by what it adds, a removal leaves it.
    bound: Option<usize>,
}

/// What an absent map reads as.
fn empty() -> &'static Inner {
    static EMPTY: std::sync::OnceLock<Inner> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Inner::default)
}

/// Where the entries of one name belong.
enum Place {
    /// A pseudo-header, or a name that is not an HTTP token: the side list.
    Side,
    /// An HTTP field name: hyper's map, unless a value of it is on the side already.
    Field(HeaderName),
}

fn place(name: &[u8]) -> Place {
    if is_pseudo(name) {
        return Place::Side;
    }
    match HeaderName::from_bytes(name) {
        Ok(n) => Place::Field(n),
        Err(_) => Place::Side,
    }
}

fn is_pseudo(name: &[u8]) -> bool {
    name.first() == Some(&b':')
}

impl HeaderMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// The map over hyper's `fields`, moved in as they are, after the pseudo-headers
    /// `pseudo`; marked unchanged.
    pub fn from_http(pseudo: &[(&str, &str)], fields: http::HeaderMap) -> Self {
        let bytes = pseudo.iter().map(|(k, v)| k.len() + v.len()).sum();
        let mut side = List::with_capacity(pseudo.len(), bytes);
        for (k, v) in pseudo {
            side.add(k, v);
        }
        HeaderMap {
            inner: Some(Box::new(Inner {
                fields,
                side,
                bound: None,
            })),
            changed: false,
        }
    }

    fn view(&self) -> &Inner {
        self.inner.as_deref().unwrap_or_else(|| empty())
    }

    fn edit(&mut self) -> &mut Inner {
        self.changed = true;
        self.inner.get_or_insert_with(Box::default)
    }

    /// The fields as hyper carries them: every entry but the pseudo-headers and the
    /// [`uncarried`](Self::uncarried) ones.
    pub fn fields(&self) -> &http::HeaderMap {
        &self.view().fields
    }

    /// Takes the fields out (see [`fields`](Self::fields)), leaving none.
    pub fn take_fields(&mut self) -> http::HeaderMap {
        self.inner
            .as_mut()
            .map(|i| std::mem::take(&mut i.fields))
            .unwrap_or_default()
    }

    /// The entries HTTP cannot carry: a name that is not a token, or a value with a
    /// control byte (CR, LF, NUL...). A filter put them there; hyper would refuse them.
    pub fn uncarried(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.view()
            .side
            .iter()
            .filter(|(k, _)| !is_pseudo(k.as_bytes()))
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
        let i = self.view();
        i.side.len() + i.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + Clone {
        // Names on the side are written as UTF-8; hyper's are ASCII.
        self.iter_bytes()
            .map(|(k, v)| (std::str::from_utf8(k).unwrap_or(""), v))
    }

    /// The pairs as bytes, in the map's order: what the ABI encodes.
    pub fn iter_bytes(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        let i = self.view();
        let pseudo = i.side.iter_bytes().filter(|(k, _)| is_pseudo(k));
        let odd = i.side.iter_bytes().filter(|(k, _)| !is_pseudo(k));
        pseudo.chain(Fields::new(&i.fields)).chain(odd)
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let i = self.view();
        match i.side.get(name) {
            Some(v) => Some(v),
            None => i.fields.get(name).map(HeaderValue::as_bytes),
        }
    }

    /// The first value of `name` when it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        // A name's values are all on one side: one of the two is empty.
        let i = self.view();
        let fields = if is_pseudo(name.as_bytes()) {
            None
        } else {
            Some(i.fields.get_all(name).into_iter())
        };
        i.side
            .get_all(name)
            .chain(fields.into_iter().flatten().map(HeaderValue::as_bytes))
    }

    pub fn add(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.edit().add(name.as_ref(), value.as_ref());
    }

    /// Sets `name` to one value: the first entry is replaced in place (so a pseudo-header
    /// keeps its position) and any others are removed; appended when absent.
    pub fn set(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.edit().set(name.as_ref(), value.as_ref());
    }

    pub fn remove(&mut self, name: &str) {
        if self.inner.as_mut().is_some_and(|i| i.remove(name)) {
            self.changed = true;
        }
    }

    pub fn clear(&mut self) {
        self.changed = true;
        self.inner = None;
    }

    /// Whether one more entry of `entry` bytes (name and value) keeps the map's
    /// [`held_bytes`](Self::held_bytes) within `limit`. The map keeps a count that every
    /// addition raises and no removal lowers; it is measured when it has no count yet,
    /// and again only when the count would pass `limit`. So a map well within the limit
    /// costs one addition per check.
    pub fn fits(&mut self, entry: usize, limit: usize) -> bool {
        let extra = entry.saturating_add(ENTRY_BYTES);
        let within = |size: usize| size.checked_add(extra).is_some_and(|n| n <= limit);
        let Some(i) = self.inner.as_deref_mut() else {
            return within(0);
        };
        if i.bound.is_some_and(within) {
            return true;
        }
        let size = i.held_bytes();
        i.bound = Some(size);
        within(size)
    }

    /// What the map counts against a limit on its size: its names and values, and
    /// [`ENTRY_BYTES`] for each entry.
    pub fn held_bytes(&self) -> usize {
        self.view().held_bytes()
    }

    /// Total bytes of names and values, the measure header limits use.
    pub fn byte_size(&self) -> usize {
        self.view().byte_size()
    }
}

/// The edits, on the two sides. Every value of one name sits on one side.
impl Inner {
    fn byte_size(&self) -> usize {
        let fields: usize = self
            .fields
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        self.side.byte_size() + fields
    }

    fn held_bytes(&self) -> usize {
        let entries = self.side.len() + self.fields.len();
        self.byte_size() + entries * ENTRY_BYTES
    }

    /// Raises the count [`HeaderMap::fits`] keeps by an entry's bytes.
    fn count(&mut self, name: &[u8], value: &[u8]) {
        if let Some(b) = &mut self.bound {
            *b = b.saturating_add(name.len() + value.len() + ENTRY_BYTES);
        }
    }

    /// Moves `name`'s values from hyper's map to the side, in order: a value of it
    /// that hyper cannot hold is coming.
    fn move_aside(&mut self, name: &HeaderName) {
        if let http::header::Entry::Occupied(e) = self.fields.entry(name) {
            let (name, values) = e.remove_entry_mult();
            for v in values {
                self.side.add(name.as_str(), v.as_bytes());
            }
        }
    }

    fn add(&mut self, name: &[u8], value: &[u8]) {
        self.count(name, value);
        let Place::Field(n) = place(name) else {
            return self.side.add(name, value);
        };
        if self.side.get(n.as_str()).is_some() {
            return self.side.add(n.as_str(), value);
        }
        match HeaderValue::from_bytes(value) {
            Ok(v) => {
                if self.fields.try_append(n, v).is_ok() {
                    return;
                }
                // Hyper's map is full (2^15 names): this name goes aside whole.
                if let Place::Field(n) = place(name) {
                    self.move_aside(&n);
                }
                self.side.add(name, value);
            }
            Err(_) => {
                self.move_aside(&n);
                self.side.add(n.as_str(), value);
            }
        }
    }

    fn set(&mut self, name: &[u8], value: &[u8]) {
        self.count(name, value);
        let Place::Field(n) = place(name) else {
            return self.side.set(name, value);
        };
        if let Ok(v) = HeaderValue::from_bytes(value) {
            self.side.remove(n.as_str());
            if self.fields.try_insert(n, v).is_ok() {
                return;
            }
            // Hyper's map is full (2^15 names).
            return self.side.set(name, value);
        }
        self.fields.remove(&n);
        self.side.set(n.as_str(), value);
    }

    /// Removes every entry of `name`; whether there was one.
    fn remove(&mut self, name: &str) -> bool {
        let side = self.side.remove(name);
        let fields = !is_pseudo(name.as_bytes()) && self.fields.remove(name).is_some();
        side || fields
    }
}

/// Hyper's fields as byte pairs. It can be cloned (hyper's iterator cannot): a clone
/// starts again and skips what was taken, which costs nothing where it is used, before
/// the first item.
struct Fields<'a> {
    map: &'a http::HeaderMap,
    iter: http::header::Iter<'a, HeaderValue>,
    taken: usize,
}

impl<'a> Fields<'a> {
    fn new(map: &'a http::HeaderMap) -> Self {
        Fields {
            map,
            iter: map.iter(),
            taken: 0,
        }
    }
}

impl Clone for Fields<'_> {
    fn clone(&self) -> Self {
        let mut iter = self.map.iter();
        for _ in 0..self.taken {
            iter.next();
        }
        Fields {
            map: self.map,
            iter,
            taken: self.taken,
        }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (k, v) = self.iter.next()?;
        self.taken += 1;
        Some((k.as_str().as_bytes(), v.as_bytes()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.iter.size_hint()
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

/// Built in two passes, so that n pairs cost O(n) (a filter's `set_header_map_pairs`
/// can pass a great many): first which names must sit on the side, then each pair
/// straight to its side. Adding them one by one would look the side list up for each.
impl<K: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(K, V)> for HeaderMap {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let pairs: Vec<(K, V)> = iter.into_iter().collect();
        if pairs.is_empty() {
            return HeaderMap::new();
        }
        let places: Vec<Place> = pairs.iter().map(|(k, _)| place(k.as_ref())).collect();
        // Field names with a value hyper cannot hold: all their values go aside.
        let aside: std::collections::HashSet<&HeaderName> = pairs
            .iter()
            .zip(&places)
            .filter_map(|((_, v), p)| match p {
                Place::Field(n) if HeaderValue::from_bytes(v.as_ref()).is_err() => Some(n),
                _ => None,
            })
            .collect();
        let mut inner = Inner::default();
        for ((k, v), p) in pairs.iter().zip(&places) {
            let (k, v) = (k.as_ref(), v.as_ref());
            match p {
                Place::Field(n) if !aside.contains(n) => {
                    // Checked above; hyper's map may be full (2^15 names), and `add`
                    // then puts the name aside.
                    let value = HeaderValue::from_bytes(v).expect("a value hyper holds");
                    if inner.fields.try_append(n.clone(), value).is_err() {
                        inner.add(k, v);
                    }
                }
                _ => inner.side.add(k, v),
            }
        }
        HeaderMap {
            inner: Some(Box::new(inner)),
            changed: true,
        }
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
    fn hyper_map_is_moved_in_and_out_as_it_is() {
        let mut fields = http::HeaderMap::new();
        fields.append("x-a", HeaderValue::from_static("1"));
        fields.append("x-b", HeaderValue::from_static("2"));
        let mut m = HeaderMap::from_http(&[(":path", "/p")], fields.clone());
        assert!(!m.is_changed());
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            vec![(":path", &b"/p"[..]), ("x-a", b"1"), ("x-b", b"2")]
        );
        assert_eq!(m.fields(), &fields);
        m.add("x-a", "3");
        m.set("x-c", "4");
        let out = m.take_fields();
        let a: Vec<_> = out.get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "3"]);
        assert_eq!(out.get("x-c").unwrap(), "4");
        assert_eq!(m.len(), 1, "only the pseudo-header is left");
    }

    #[test]
    fn what_http_cannot_carry_is_kept_aside_in_order() {
        let mut m = HeaderMap::new();
        m.add("x-a", "1");
        m.add("x-a", "2\r\nx-evil: 1");
        m.add("x-a", "3");
        m.add("bad name", "v");
        m.add(":authority", "h");
        assert_eq!(
            m.get_all("x-a").collect::<Vec<_>>(),
            vec![&b"1"[..], b"2\r\nx-evil: 1", b"3"]
        );
        assert!(m.fields().is_empty(), "x-a went to the side whole");
        let odd: Vec<_> = m.uncarried().map(|(k, _)| k).collect();
        assert_eq!(odd, ["x-a", "x-a", "x-a", "bad name"]);
        // A good value set over them brings the name back into hyper's map.
        m.set("X-A", "4");
        assert_eq!(m.fields().get("x-a").unwrap(), "4");
        assert_eq!(m.uncarried().count(), 1);
        assert_eq!(m.iter().next(), Some((":authority", &b"h"[..])));
    }

    #[test]
    fn a_clone_of_the_pairs_starts_where_it_was() {
        let m: HeaderMap = [(":a", "0"), ("x", "1"), ("y", "2"), ("z", "\n")]
            .into_iter()
            .collect();
        let mut it = m.iter_bytes();
        it.next();
        it.next();
        let rest: Vec<_> = it.clone().collect();
        assert_eq!(rest, it.collect::<Vec<_>>());
        assert_eq!(rest.len(), 2);
    }

    /// Operations on a map, and the model they are checked against: a plain list of
    /// (lower-case name, value), Envoy's semantics spelled out the slow way.
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
        // Any bytes, with a small alphabet favoured so that one name often gets values
        // hyper can and cannot hold.
        let value =
            proptest::collection::vec(prop_oneof![4 => b'a'..=b'c', 1 => any::<u8>()], 0..12);
        prop_oneof![
            4 => (any::<u8>(), value.clone()).prop_map(|(n, v)| Op::Add(n, v)),
            4 => (any::<u8>(), value).prop_map(|(n, v)| Op::Set(n, v)),
            2 => any::<u8>().prop_map(Op::Remove),
            1 => Just(Op::Clear),
        ]
    }

    type Model = Vec<(String, Vec<u8>)>;

    fn apply(model: &mut Model, o: &Op) {
        match o {
            Op::Add(n, v) => model.push((name(*n).to_lowercase(), v.clone())),
            Op::Set(n, v) => {
                let k = name(*n).to_lowercase();
                match model.iter().position(|(x, _)| *x == k) {
                    Some(i) => {
                        model[i].1 = v.clone();
                        let mut seen = false;
                        model.retain(|(x, _)| {
                            if *x != k {
                                return true;
                            }
                            let keep = !seen;
                            seen = true;
                            keep
                        });
                    }
                    None => model.push((k, v.clone())),
                }
            }
            Op::Remove(n) => {
                let k = name(*n).to_lowercase();
                model.retain(|(x, _)| *x != k);
            }
            Op::Clear => model.clear(),
        }
    }

    /// The entries of one name, in order, for each name; and the pseudo-headers in
    /// order. What the map's order promises (the order between names aside).
    fn by_name(pairs: &Model) -> (Vec<(String, Vec<Vec<u8>>)>, Model) {
        let mut names: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        for (k, v) in pairs {
            match names.iter_mut().find(|(x, _)| x == k) {
                Some((_, vs)) => vs.push(v.clone()),
                None => names.push((k.clone(), vec![v.clone()])),
            }
        }
        names.sort();
        let pseudo = pairs.iter().filter(|(k, _)| k.starts_with(':')).cloned();
        (names, pseudo.collect())
    }

    proptest! {
        #[test]
        fn the_side_list_behaves_like_the_model(ops in proptest::collection::vec(op(), 0..200)) {
            let mut m = List::default();
            let mut model = Model::new();
            for o in ops {
                match &o {
                    Op::Add(n, v) => m.add(name(*n), v),
                    Op::Set(n, v) => m.set(name(*n), v),
                    Op::Remove(n) => { m.remove(name(*n)); }
                    Op::Clear => m = List::default(),
                }
                apply(&mut model, &o);
                let got: Model = m.iter().map(|(k, v)| (k.to_owned(), v.to_vec())).collect();
                prop_assert_eq!(&got, &model);
                prop_assert_eq!(
                    m.byte_size(),
                    model.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
                );
            }
        }

        #[test]
        fn the_map_behaves_like_the_model(ops in proptest::collection::vec(op(), 0..200)) {
            let mut m = HeaderMap::new();
            let mut model = Model::new();
            for o in ops {
                match &o {
                    Op::Add(n, v) => m.add(name(*n), v),
                    Op::Set(n, v) => m.set(name(*n), v),
                    Op::Remove(n) => m.remove(name(*n)),
                    Op::Clear => m.clear(),
                }
                apply(&mut model, &o);
                let got: Model = m.iter().map(|(k, v)| (k.to_owned(), v.to_vec())).collect();
                prop_assert_eq!(by_name(&got), by_name(&model));
                // The pseudo-headers come first.
                let pseudo = got.iter().take_while(|(k, _)| k.starts_with(':')).count();
                prop_assert_eq!(pseudo, by_name(&model).1.len());
                prop_assert_eq!(m.len(), model.len());
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
                    let all: Vec<&[u8]> = m.get_all(name(i)).collect();
                    let want: Vec<&[u8]> =
                        model.iter().filter(|(x, _)| *x == k).map(|(_, v)| v.as_slice()).collect();
                    prop_assert_eq!(all, want);
                }
                // Hyper's map holds only what HTTP can carry; the rest is on the side.
                for (k, v) in m.fields() {
                    prop_assert!(HeaderValue::from_bytes(v.as_bytes()).is_ok(), "{k}");
                }
            }
        }

        /// A map built from pairs at once holds what adding them one by one holds.
        #[test]
        fn a_map_built_from_pairs_is_the_map_of_the_additions(
            pairs in proptest::collection::vec((any::<u8>(), proptest::collection::vec(
                prop_oneof![4 => b'a'..=b'c', 1 => any::<u8>()], 0..6)), 0..60),
        ) {
            let pairs: Vec<(&str, Vec<u8>)> = pairs.iter().map(|(n, v)| (name(*n), v.clone())).collect();
            let built: HeaderMap = pairs.iter().map(|(k, v)| (k, v)).collect();
            let mut added = HeaderMap::new();
            for (k, v) in &pairs {
                added.add(k, v);
            }
            let model: Model = pairs.iter().map(|(k, v)| (k.to_lowercase(), v.clone())).collect();
            let got = |m: &HeaderMap| -> Model {
                m.iter().map(|(k, v)| (k.to_owned(), v.to_vec())).collect()
            };
            prop_assert_eq!(by_name(&got(&built)), by_name(&model));
            // The order between names may differ (as it may between any two maps).
            prop_assert_eq!(by_name(&got(&built)), by_name(&got(&added)));
            let pseudo = got(&built).iter().take_while(|(k, _)| k.starts_with(':')).count();
            prop_assert_eq!(pseudo, by_name(&model).1.len());
            prop_assert_eq!(built.byte_size(), added.byte_size());
            // Hyper's map holds only what HTTP can carry, and every value of a name
            // sits on one side.
            for (k, v) in built.fields() {
                prop_assert!(HeaderValue::from_bytes(v.as_bytes()).is_ok(), "{k}");
                prop_assert!(built.view().side.get(k.as_str()).is_none(), "{k} on both sides");
            }
        }

        /// `fits` answers exactly whether the map stays within the limit, however
        /// far its count is from the size after replacements, removals, a map taken
        /// from hyper, or additions made without asking.
        #[test]
        fn fits_answers_whether_the_map_stays_within_the_limit(
            start in proptest::collection::vec((0u8..5, "[a-c]{0,6}"), 0..6),
            steps in proptest::collection::vec((op(), 0usize..400, any::<bool>()), 0..150),
        ) {
            let mut fields = http::HeaderMap::new();
            for (n, v) in &start {
                let n = HeaderName::from_bytes(name(*n).to_lowercase().as_bytes());
                if let Ok(n) = n {
                    fields.append(n, HeaderValue::from_str(v).unwrap());
                }
            }
            let mut m = HeaderMap::from_http(&[(":path", "/")], fields);
            for (o, limit, ask) in steps {
                let entry = match &o {
                    Op::Add(n, v) | Op::Set(n, v) => Some(name(*n).len() + v.len()),
                    _ => None,
                };
                let held = m.byte_size() + m.len() * ENTRY_BYTES;
                prop_assert_eq!(m.held_bytes(), held);
                let e = entry.unwrap_or(0);
                let within = held + e + ENTRY_BYTES <= limit;
                if ask || entry.is_none() {
                    prop_assert_eq!(m.fits(e, limit), within);
                    if !within && entry.is_some() {
                        continue;
                    }
                }
                match &o {
                    Op::Add(n, v) => m.add(name(*n), v),
                    Op::Set(n, v) => m.set(name(*n), v),
                    Op::Remove(n) => m.remove(name(*n)),
                    Op::Clear => m.clear(),
                }
            }
        }
    }

    #[test]
    fn fits_counts_what_it_lets_in() {
        const E: usize = ENTRY_BYTES;
        let mut m = HeaderMap::new();
        assert!(m.fits(10, 10 + E));
        m.add("abcde", "fghij");
        assert!(!m.fits(0, 10 + E), "an empty entry counts too");
        m.remove("abcde");
        // Measured again at the limit: the removal made room.
        assert!(m.fits(10, 10 + E));
        m.set("abcde", "fghij");
        m.set("abcde", "fghij");
        // The count says two entries; measured, the map holds one.
        assert!(m.fits(4, 14 + 2 * E));
        assert!(!m.fits(5, 14 + 2 * E));
        assert!(!m.fits(usize::MAX, usize::MAX));
    }
}
