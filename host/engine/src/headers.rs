//! The header map a filter sees, with Envoy's semantics: names are lower-cased on the
//! way in, lookups ignore case, a get returns the first value, a replace leaves one.

/// An ordered multimap of header names (lower-case) to raw byte values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderMap {
    entries: Vec<(String, Vec<u8>)>,
}

impl HeaderMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(n: usize) -> Self {
        HeaderMap {
            entries: Vec::with_capacity(n),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + Clone {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `name` when it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.entries
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub fn add(&mut self, name: impl AsRef<[u8]>, value: impl Into<Vec<u8>>) {
        self.entries.push((lower(name.as_ref()), value.into()));
    }

    /// Adds a name the caller knows is lower-case already, such as an `http` crate
    /// header name (always lower-case): no case folding pass. A name that is not
    /// lower-case is folded all the same.
    pub fn add_lowercase(&mut self, name: &str, value: &[u8]) {
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            name.to_ascii_lowercase()
        } else {
            name.to_owned()
        };
        self.entries.push((name, value.to_vec()));
    }

    /// Sets `name` to one value: the first entry is replaced in place (so a pseudo-header
    /// keeps its position) and any others are removed; appended when absent.
    pub fn set(&mut self, name: impl AsRef<[u8]>, value: impl Into<Vec<u8>>) {
        let name = lower(name.as_ref());
        match self.entries.iter().position(|(k, _)| *k == name) {
            Some(i) => {
                self.entries[i].1 = value.into();
                let mut seen = false;
                self.entries.retain(|(k, _)| {
                    if *k != name {
                        return true;
                    }
                    let keep = !seen;
                    seen = true;
                    keep
                });
            }
            None => self.entries.push((name, value.into())),
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Total bytes of names and values, the measure header limits use.
    pub fn byte_size(&self) -> usize {
        self.entries.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

impl<K: AsRef<[u8]>, V: Into<Vec<u8>>> FromIterator<(K, V)> for HeaderMap {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = HeaderMap::new();
        for (k, v) in iter {
            map.add(k, v);
        }
        map
    }
}

fn lower(name: &[u8]) -> String {
    // Header names are tokens (ASCII); anything else is kept lossily rather than
    // refused, as Envoy's map stores whatever bytes the filter gives it.
    match std::str::from_utf8(name) {
        Ok(s) => s.to_ascii_lowercase(),
        Err(_) => String::from_utf8_lossy(name).to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
