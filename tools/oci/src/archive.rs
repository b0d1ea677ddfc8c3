//! Deterministic archives: a [`Tree`] of files and directories always makes the same
//! tar bytes, and [`gzip`] the same compressed bytes, whoever builds them, wherever and
//! whenever. Every timestamp is the epoch, owners are numeric (no user names), entries
//! come in byte order of their paths with each directory before what it holds, and the
//! gzip header carries no time and the "unknown" OS byte.

use std::collections::BTreeMap;
use std::io::Write;

use crate::OciError;

/// The modification time of every entry and of the gzip header.
pub const EPOCH: u64 = 0;

/// The gzip header's OS byte: 255, "unknown", so the builder's OS does not show.
pub const GZIP_OS_UNKNOWN: u8 = 255;

/// One entry of a [`Tree`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir {
        mode: u32,
        uid: u64,
        gid: u64,
    },
    File {
        mode: u32,
        uid: u64,
        gid: u64,
        data: Vec<u8>,
    },
}

/// Files and directories by relative path (`usr/local/bin/portcullis`), made into a tar.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Adds a file owned by root; missing parent directories are added (root, 0755).
    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) -> Result<&mut Tree, OciError> {
        self.file_owned(path, data, mode, 0, 0)
    }

    /// Adds a file with this owner.
    pub fn file_owned(
        &mut self,
        path: &str,
        data: Vec<u8>,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Result<&mut Tree, OciError> {
        let path = check_path(path)?;
        self.parents(&path)?;
        if let Some(Node::Dir { .. }) = self.nodes.get(&path) {
            return Err(OciError::Invalid(format!("{path} is already a directory")));
        }
        self.nodes.insert(
            path,
            Node::File {
                mode,
                uid,
                gid,
                data,
            },
        );
        Ok(self)
    }

    /// Adds a directory (or sets the mode and owner of one already implied by a file).
    pub fn dir(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Result<&mut Tree, OciError> {
        let path = check_path(path)?;
        self.parents(&path)?;
        if let Some(Node::File { .. }) = self.nodes.get(&path) {
            return Err(OciError::Invalid(format!("{path} is already a file")));
        }
        self.nodes.insert(path, Node::Dir { mode, uid, gid });
        Ok(self)
    }

    fn parents(&mut self, path: &str) -> Result<(), OciError> {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let parent = &path[..end + i];
            match self.nodes.get(parent) {
                Some(Node::Dir { .. }) => {}
                Some(Node::File { .. }) => {
                    return Err(OciError::Invalid(format!(
                        "{parent} is a file, not a directory"
                    )));
                }
                None => {
                    self.nodes.insert(
                        parent.to_owned(),
                        Node::Dir {
                            mode: 0o755,
                            uid: 0,
                            gid: 0,
                        },
                    );
                }
            }
            end += i + 1;
        }
        Ok(())
    }

    /// The entries, in the order the tar holds them.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(p, n)| (p.as_str(), n))
    }

    /// The tree as a POSIX ustar archive.
    pub fn tar(&self) -> Result<Vec<u8>, OciError> {
        let mut builder = tar::Builder::new(Vec::new());
        let invalid = |p: &str, e: std::io::Error| OciError::Invalid(format!("{p}: {e}"));
        for (path, node) in &self.nodes {
            let mut h = tar::Header::new_ustar();
            h.set_mtime(EPOCH);
            let data: &[u8] = match node {
                Node::Dir { mode, uid, gid } => {
                    h.set_path(format!("{path}/"))
                        .map_err(|e| invalid(path, e))?;
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_uid(*uid);
                    h.set_gid(*gid);
                    h.set_size(0);
                    &[]
                }
                Node::File {
                    mode,
                    uid,
                    gid,
                    data,
                } => {
                    h.set_path(path).map_err(|e| invalid(path, e))?;
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_uid(*uid);
                    h.set_gid(*gid);
                    h.set_size(data.len() as u64);
                    data
                }
            };
            h.set_cksum();
            builder.append(&h, data).map_err(|e| invalid(path, e))?;
        }
        builder
            .into_inner()
            .map_err(|e| OciError::Invalid(format!("tar: {e}")))
    }
}

/// A path inside an archive: relative, `/`-separated, no empty, `.` or `..` segment,
/// no NUL; a trailing `/` is dropped.
fn check_path(path: &str) -> Result<String, OciError> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let bad = trimmed.is_empty()
        || trimmed.starts_with('/')
        || trimmed.contains('\0')
        || trimmed
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
    if bad {
        return Err(OciError::Invalid(format!(
            "bad path in an archive: {path:?}"
        )));
    }
    Ok(trimmed.to_owned())
}

/// `data` gzip-compressed (default level), with no file name, mtime 0 and the OS byte
/// "unknown".
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(EPOCH as u32)
        .operating_system(GZIP_OS_UNKNOWN)
        .write(
            Vec::with_capacity(data.len() / 2),
            flate2::Compression::default(),
        );
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Read;

    /// Path, type, mode, uid, gid, mtime and data of each entry.
    type Entry = (String, tar::EntryType, u32, u64, u64, u64, Vec<u8>);

    fn read_back(tar_bytes: &[u8]) -> Vec<Entry> {
        let mut a = tar::Archive::new(tar_bytes);
        let mut out = Vec::new();
        for e in a.entries().expect("entries") {
            let mut e = e.expect("an entry");
            let h = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("its data");
            out.push((
                String::from_utf8_lossy(&h.path_bytes()).into_owned(),
                h.entry_type(),
                h.mode().expect("mode"),
                h.uid().expect("uid"),
                h.gid().expect("gid"),
                h.mtime().expect("mtime"),
                data,
            ));
        }
        out
    }

    #[test]
    fn parents_come_first_with_their_modes_and_owners() {
        let mut t = Tree::new();
        t.file("usr/local/bin/portcullis", b"bin".to_vec(), 0o755)
            .expect("a file");
        t.dir("var/cache/portcullis", 0o755, 65532, 65532)
            .expect("a dir");
        t.file("etc/passwd", b"root".to_vec(), 0o644)
            .expect("a file");
        let entries = read_back(&t.tar().expect("a tar"));
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "etc/",
                "etc/passwd",
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "usr/local/bin/portcullis",
                "var/",
                "var/cache/",
                "var/cache/portcullis/"
            ]
        );
        let cache = &entries[8];
        assert_eq!(
            (cache.1, cache.2, cache.3, cache.4),
            (tar::EntryType::Directory, 0o755, 65532, 65532)
        );
        let bin = &entries[5];
        assert_eq!(
            (bin.1, bin.2, bin.3, bin.6.as_slice()),
            (tar::EntryType::Regular, 0o755, 0, &b"bin"[..])
        );
        assert!(entries.iter().all(|e| e.5 == EPOCH));
    }

    #[test]
    fn paths_that_could_escape_or_clash_are_refused() {
        for bad in ["", "/etc/passwd", "a/../b", "./a", "a//b", "..", "a/\0"] {
            assert!(Tree::new().file(bad, vec![], 0o644).is_err(), "{bad:?}");
        }
        let mut t = Tree::new();
        t.file("a/b", vec![], 0o644).expect("a file");
        assert!(t.file("a/b/c", vec![], 0o644).is_err(), "under a file");
        assert!(t.dir("a/b", 0o755, 0, 0).is_err(), "a file as a dir");
        assert!(t.file("a", vec![], 0o644).is_err(), "a dir as a file");
    }

    #[test]
    fn gzip_header_has_no_time_name_or_os() {
        let gz = gzip(b"plugin");
        // ID1 ID2 CM FLG MTIME(4) XFL OS
        assert_eq!(
            &gz[..4],
            &[0x1f, 0x8b, 8, 0],
            "magic, deflate, no flags (no name)"
        );
        assert_eq!(&gz[4..8], &[0, 0, 0, 0], "mtime 0");
        assert_eq!(gz[9], GZIP_OS_UNKNOWN);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .expect("gunzip");
        assert_eq!(back, b"plugin");
    }

    proptest! {
        // Any set of files: the tar reads back as exactly those files, and inserting
        // them in another order makes the same bytes.
        #[test]
        fn tar_is_the_files_in_any_insertion_order(
            files in proptest::collection::btree_map("[a-z]{1,8}(/[a-z]{1,8}){0,2}", proptest::collection::vec(any::<u8>(), 0..600), 1..8)
        ) {
            // Keep only paths that are not a prefix-directory of another.
            let paths: Vec<&String> = files.keys().collect();
            let files: Vec<(&String, &Vec<u8>)> = files
                .iter()
                .filter(|(p, _)| !paths.iter().any(|q| q.starts_with(&format!("{p}/"))))
                .collect();
            let mut forward = Tree::new();
            for (p, d) in &files {
                forward.file(p, (*d).clone(), 0o644).expect("a file");
            }
            let mut backward = Tree::new();
            for (p, d) in files.iter().rev() {
                backward.file(p, (*d).clone(), 0o644).expect("a file");
            }
            let a = forward.tar().expect("a tar");
            prop_assert_eq!(&a, &backward.tar().expect("a tar"));
            prop_assert_eq!(gzip(&a), gzip(&a));
            let back: Vec<(String, Vec<u8>)> = read_back(&a)
                .into_iter()
                .filter(|e| e.1 == tar::EntryType::Regular)
                .map(|e| (e.0, e.6))
                .collect();
            let want: Vec<(String, Vec<u8>)> = files.iter().map(|(p, d)| ((*p).clone(), (*d).clone())).collect();
            prop_assert_eq!(back, want);
        }
    }
}
