//! The encrypted cookies: XChaCha20-Poly1305 (RustCrypto) with a key id, so secrets
//! rotate without logging everyone out (the first secret encrypts, every secret
//! decrypts); reading the cookies of a request, splitting a long value across numbered
//! cookies and joining it again; writing `Set-Cookie`.
//!
//! A sealed value is `<key id>.<base64url(nonce 24 bytes || ciphertext || tag)>`. The
//! cookie's purpose (`session`, `login`) is the associated data, so a login cookie can
//! never be presented as a session. Anything that does not open, whatever the reason,
//! is simply "no cookie" for the caller.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::Digest;

/// The cookies' `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

/// How the session cookies are written.
#[derive(Debug, Clone)]
pub struct CookieSettings {
    /// The session cookie's name, with the `__Host-` prefix when it applies.
    pub name: String,
    /// The login-state cookie's name.
    pub state_name: String,
    pub secure: bool,
    pub samesite: SameSite,
    pub domain: Option<String>,
    pub path: String,
}

const NONCE: usize = 24;
const TAG: usize = 16;
/// The longest sealed value accepted (all chunks together): bounded work for any input.
pub const MAX_SEALED: usize = 24 * 1024;
/// Browsers keep cookies up to 4096 bytes (name, value and attributes together): a
/// longer value is split into chunks of this size.
pub const CHUNK: usize = 3800;
/// At most this many chunks are read back.
pub const MAX_CHUNKS: usize = 6;
/// The longest value [`read_chunked`] and [`SessionKeys::open`] take back: a longer
/// one must never be set, or the browser would carry a session nobody can read (and
/// log in again and again).
pub const MAX_READABLE: usize = if MAX_SEALED < CHUNK * MAX_CHUNKS {
    MAX_SEALED
} else {
    CHUNK * MAX_CHUNKS
};
/// Shortest secret accepted: 32 characters (a 256-bit key needs that much entropy from
/// a random string).
pub const MIN_SECRET: usize = 32;

/// Why a cookie did not open. Callers treat every one the same (no cookie); the kind
/// is for the log line, which never carries the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    #[error("malformed")]
    Malformed,
    #[error("too large")]
    TooLarge,
    #[error("sealed with an unknown key id")]
    UnknownKey,
    #[error("does not authenticate (tampered, truncated or another purpose)")]
    Tampered,
}

pub struct SessionKeys {
    /// (id, cipher); the first one seals.
    keys: Vec<(String, XChaCha20Poly1305)>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("SessionKeys").field("ids", &ids).finish()
    }
}

impl SessionKeys {
    /// Keys from (id, secret) pairs. The key is SHA-256 of a domain label and the
    /// secret, so the same string used elsewhere does not give the same key.
    pub fn new<'a>(
        secrets: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Result<SessionKeys, String> {
        SessionKeys::bound(secrets, &[])
    }

    /// The same keys, bound to `binding` (each part length-prefixed between the label
    /// and the secret): a value sealed under one binding does not open under another,
    /// whatever the secret. The filter binds its cookies to its issuer, client and
    /// required authentication classes, so a session made by one filter is not one
    /// for another sharing the secret (another IdP, or a step-up route).
    pub fn bound<'a>(
        secrets: impl Iterator<Item = (&'a str, &'a str)>,
        binding: &[&str],
    ) -> Result<SessionKeys, String> {
        let mut keys: Vec<(String, XChaCha20Poly1305)> = Vec::new();
        for (id, secret) in secrets {
            if id.is_empty()
                || id.len() > 16
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!("key id `{id}`: 1 to 16 letters, digits, - or _"));
            }
            if keys.iter().any(|(k, _)| k == id) {
                return Err(format!("key id `{id}` is used twice"));
            }
            if secret.len() < MIN_SECRET {
                return Err(format!(
                    "secret `{id}` is shorter than {MIN_SECRET} characters"
                ));
            }
            let mut h = sha2::Sha256::new();
            h.update(b"portcullis oidc cookie key v1\0");
            for part in binding {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part.as_bytes());
            }
            h.update(secret.as_bytes());
            let key = h.finalize();
            let cipher = XChaCha20Poly1305::new_from_slice(key.as_slice())
                .map_err(|_| "cannot build the cipher".to_string())?;
            keys.push((id.to_owned(), cipher));
        }
        if keys.is_empty() {
            return Err("at least one secret is needed".into());
        }
        Ok(SessionKeys { keys })
    }

    /// Seals `plain` for `purpose` with the first key and a fresh random nonce.
    pub fn seal(&self, purpose: &str, plain: &[u8]) -> Result<String, getrandom::Error> {
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce)?;
        Ok(self.seal_with_nonce(purpose, plain, nonce))
    }

    /// Seals with a given nonce: for tests, and for `seal` once it has its randomness.
    pub fn seal_with_nonce(&self, purpose: &str, plain: &[u8], nonce: [u8; NONCE]) -> String {
        let (id, cipher) = &self.keys[0];
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: purpose.as_bytes(),
                },
            )
            // Encryption only fails for plaintexts of ~256 GiB.
            .unwrap_or_default();
        let mut raw = Vec::with_capacity(NONCE + sealed.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&sealed);
        let mut out = String::with_capacity(id.len() + 1 + raw.len() * 4 / 3 + 4);
        out.push_str(id);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&raw, &mut out);
        out
    }

    /// Opens a sealed value for `purpose` with whichever key its id names.
    pub fn open(&self, purpose: &str, value: &str) -> Result<Vec<u8>, CookieError> {
        if value.len() > MAX_SEALED {
            return Err(CookieError::TooLarge);
        }
        let (id, body) = value.split_once('.').ok_or(CookieError::Malformed)?;
        let cipher = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, c)| c)
            .ok_or(CookieError::UnknownKey)?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| CookieError::Malformed)?;
        if raw.len() < NONCE + TAG {
            return Err(CookieError::Malformed);
        }
        let (nonce, sealed) = raw.split_at(NONCE);
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: purpose.as_bytes(),
                },
            )
            .map_err(|_| CookieError::Tampered)
    }
}

/// The value of cookie `name` across the request's `Cookie` headers, the first one
/// when the browser sent several (the most specific path comes first).
pub fn find<'a>(cookie_headers: &[&'a str], name: &str) -> Option<&'a str> {
    cookie_headers.iter().find_map(|h| {
        h.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v.trim().trim_matches('"'))
        })
    })
}

/// Whether any cookie `name` or `name.N` is in the request (so a reply can clear it).
pub fn names_present(cookie_headers: &[&str], name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for h in cookie_headers {
        for pair in h.split(';') {
            if let Some((k, _)) = pair.trim().split_once('=') {
                let ours = k == name
                    || k.strip_prefix(name)
                        .and_then(|r| r.strip_prefix('.'))
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                if ours && !out.iter().any(|o| o == k) {
                    out.push(k.to_owned());
                }
            }
        }
    }
    out
}

/// Characters of the state that name a login's cookie: one cookie per login, so
/// several tabs can log in at once without overwriting each other's login.
const LOGIN_SUFFIX: usize = 16;

/// The cookie of the login whose state is `state`: `<base>.<first 16 characters>`;
/// `None` for a state we could not have made.
pub fn login_name(base: &str, state: &str) -> Option<String> {
    let suffix = state.get(..LOGIN_SUFFIX)?;
    suffix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        .then(|| format!("{base}.{suffix}"))
}

/// Every login cookie (`<base>.<suffix>`) in the request.
pub fn login_names_present(cookie_headers: &[&str], base: &str) -> Vec<String> {
    let mut out = Vec::new();
    for h in cookie_headers {
        for pair in h.split(';') {
            if let Some((k, _)) = pair.trim().split_once('=')
                && k.strip_prefix(base).is_some_and(|r| r.starts_with('.'))
                && !out.iter().any(|o| o == k)
            {
                out.push(k.to_owned());
            }
        }
    }
    out
}

/// The session value: cookie `name` when it stands alone, else `name.0`, `name.1`, ...
/// joined (at most `MAX_CHUNKS`). `None` when absent.
pub fn read_chunked(cookie_headers: &[&str], name: &str) -> Option<String> {
    if let Some(v) = find(cookie_headers, name) {
        return Some(v.to_owned());
    }
    let mut out = String::new();
    let mut key = String::with_capacity(name.len() + 3);
    for i in 0..MAX_CHUNKS {
        key.clear();
        key.push_str(name);
        key.push('.');
        key.push_str(&i.to_string());
        match find(cookie_headers, &key) {
            Some(v) => out.push_str(v),
            None => break,
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Cookie (name, value) pairs that carry `value`: one cookie when it fits, else
/// numbered chunks.
pub fn chunks(name: &str, value: &str) -> Vec<(String, String)> {
    if value.len() <= CHUNK {
        return vec![(name.to_owned(), value.to_owned())];
    }
    // Base64url and the `.` are ASCII, so byte offsets are character boundaries.
    value
        .as_bytes()
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, c)| {
            (
                format!("{name}.{i}"),
                String::from_utf8_lossy(c).into_owned(),
            )
        })
        .collect()
}

/// A `Set-Cookie` value. `max_age`: `Some(0)` deletes, `None` is a browser-session
/// cookie.
pub fn set_cookie(
    s: &CookieSettings,
    name: &str,
    value: &str,
    max_age: Option<u64>,
    samesite: SameSite,
) -> String {
    let mut out = format!("{name}={value}; Path={}", s.path);
    if let Some(d) = &s.domain {
        out.push_str("; Domain=");
        out.push_str(d);
    }
    if let Some(age) = max_age {
        out.push_str(&format!("; Max-Age={age}"));
    }
    out.push_str("; HttpOnly");
    if s.secure {
        out.push_str("; Secure");
    }
    out.push_str("; SameSite=");
    out.push_str(samesite.as_str());
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn keys(list: &[(&str, &str)]) -> SessionKeys {
        SessionKeys::new(list.iter().copied()).unwrap()
    }

    const A: &str = "0123456789abcdef0123456789abcdef";
    const B: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn a_value_sealed_under_one_binding_opens_under_that_binding_only() {
        let bound = |b: &[&str]| SessionKeys::bound([("k1", A)].into_iter(), b).unwrap();
        let v = bound(&["iss", "web", ""]).seal("session", b"x").unwrap();
        assert_eq!(
            bound(&["iss", "web", ""]).open("session", &v).unwrap(),
            b"x"
        );
        for other in [
            &["iss", "admin", ""][..],
            &["iss", "web", "mfa"],
            &["is", "sweb", ""],
            &[],
        ] {
            assert!(bound(other).open("session", &v).is_err(), "{other:?}");
        }
        // No binding is the key as it was.
        let plain = keys(&[("k1", A)]).seal("session", b"y").unwrap();
        assert_eq!(bound(&[]).open("session", &plain).unwrap(), b"y");
    }

    #[test]
    fn sealed_values_open_with_any_listed_key_and_only_for_their_purpose() {
        let old = keys(&[("k1", A)]);
        let rotated = keys(&[("k2", B), ("k1", A)]);
        let v = old.seal_with_nonce("session", b"hello", [7; 24]);
        assert!(v.starts_with("k1."));
        assert_eq!(rotated.open("session", &v).unwrap(), b"hello");
        assert_eq!(rotated.open("login", &v), Err(CookieError::Tampered));
        let new = rotated.seal_with_nonce("session", b"hi", [1; 24]);
        assert!(new.starts_with("k2."), "the first secret seals");
        assert_eq!(old.open("session", &new), Err(CookieError::UnknownKey));
        // Same id, other secret: a foreign key does not authenticate.
        let foreign = keys(&[("k1", B)]);
        assert_eq!(foreign.open("session", &v), Err(CookieError::Tampered));
    }

    #[test]
    fn nonces_are_random() {
        let k = keys(&[("k1", A)]);
        assert_ne!(k.seal("s", b"x").unwrap(), k.seal("s", b"x").unwrap());
    }

    #[test]
    fn secrets_and_ids_are_checked() {
        assert!(SessionKeys::new([("k1", "short")].into_iter()).is_err());
        assert!(SessionKeys::new([("bad id", A)].into_iter()).is_err());
        assert!(SessionKeys::new([("k", A), ("k", B)].into_iter()).is_err());
        assert!(SessionKeys::new(std::iter::empty()).is_err());
        let dbg = format!("{:?}", keys(&[("k1", A)]));
        assert!(!dbg.contains(A) && dbg.contains("k1"));
    }

    #[test]
    fn each_login_has_its_own_cookie() {
        assert_eq!(
            login_name("l", "abcdefghijklmnopqrstuvwxyz").as_deref(),
            Some("l.abcdefghijklmnop")
        );
        assert_eq!(login_name("l", "short"), None);
        assert_eq!(login_name("l", "abcdefgh;jklmnopq"), None);
        assert_eq!(
            login_names_present(&["l.a=1; l=2; lx.b=3; l.b=4"], "l"),
            vec!["l.a", "l.b"]
        );
    }

    #[test]
    fn cookies_are_found_and_chunks_join() {
        let value: String = "v".repeat(CHUNK * 2 + 10);
        let parts = chunks("s", &value);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2].0, "s.2");
        let header: String = parts
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let headers = ["theme=dark", header.as_str()];
        assert_eq!(read_chunked(&headers, "s").as_deref(), Some(value.as_str()));
        assert_eq!(chunks("s", "short"), vec![("s".into(), "short".into())]);
        assert_eq!(find(&["a=1; s=2", "s=3"], "s"), Some("2"));
        assert_eq!(find(&["as=1"], "s"), None);
        assert_eq!(
            names_present(&["s.0=a; s.1=b; s=c; s.x=d; t=e"], "s"),
            vec!["s.0", "s.1", "s"]
        );
    }

    proptest::proptest! {
        // Any Cookie header: parsing never panics, and what it yields never opens.
        #[test]
        fn random_cookie_headers_never_panic_or_authenticate(
            h1 in "[ -~]{0,400}",
            h2 in "(s(\\.[0-9])?=[A-Za-z0-9_.-]{0,80}; ?){0,8}",
        ) {
            let k = keys(&[("k1", A)]);
            let headers = [h1.as_str(), h2.as_str()];
            let _ = names_present(&headers, "s");
            if let Some(v) = read_chunked(&headers, "s") {
                proptest::prop_assert!(k.open("session", &v).is_err());
            }
        }

        // Random input never panics and never opens.
        #[test]
        fn random_values_never_open(s in "\\PC{0,600}") {
            let k = keys(&[("k1", A)]);
            proptest::prop_assert!(k.open("session", &s).is_err());
            let prefixed = format!("k1.{s}");
            proptest::prop_assert!(k.open("session", &prefixed).is_err());
        }

        // Any truncation or single bit flip of a real sealed value is refused.
        #[test]
        fn truncations_and_bit_flips_never_open(
            plain in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            cut in 0usize..1000,
            flip in 0usize..8000,
        ) {
            let k = keys(&[("k1", A)]);
            let v = k.seal_with_nonce("session", &plain, [3; 24]);
            proptest::prop_assert_eq!(k.open("session", &v).unwrap(), plain.clone());
            let cut = cut % v.len();
            proptest::prop_assert!(k.open("session", &v[..cut]).is_err());
            let mut bytes = v.clone().into_bytes();
            let bit = flip % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            if let Ok(s) = String::from_utf8(bytes) {
                // A flip in the last base64 character's unused low bits decodes to the
                // same bytes; base64 refuses non-canonical trailing bits, so it fails.
                proptest::prop_assert!(k.open("session", &s).is_err(), "bit {} opened", bit);
            }
        }
    }
}
