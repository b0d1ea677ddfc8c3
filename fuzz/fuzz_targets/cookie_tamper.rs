//! A real sealed session cookie, then an attacker's edits: a session record built from
//! the input is sealed (`SessionKeys::seal_with_nonce`, the nonce from the input too),
//! carried as the browser would (`cookie::chunks`, one `Cookie` header), read back
//! (`cookie::read_chunked`) and opened; then the input's edits (flip, replace, insert,
//! delete, truncate) are made to the sealed value and it is opened again.
//!
//! Invariants: seal, chunk, read and open give back the session unchanged; any edit
//! that changes the value makes it not open; no value opens for the other purpose.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc::cookie::{self, CookieError, MAX_SEALED, SessionKeys};
use oidc::session::{self, Session};

/// Test-only secrets (the second one only opens).
const KEYS: [(&str, &str); 2] = [
    ("k2", "fuzzing-only secret, new key, 32+ chars long"),
    ("k1", "fuzzing-only secret, old key, 32+ chars long"),
];
const NAME: &str = "portcullis_session";

/// Reads the input front to back; past the end everything is zero/empty.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | (u16::from(self.u8()) << 8)
    }
    fn text(&mut self) -> String {
        let n = usize::from(self.u16() % 4096);
        String::from_utf8_lossy(self.bytes(n)).into_owned()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Ok(nonce) = <[u8; 24]>::try_from(input.bytes(24)) else {
        return;
    };
    let s = Session {
        id: input.text(),
        sub: input.text(),
        idp_sid: (input.u8() & 1 == 1).then(|| input.text()),
        created: u64::from(input.u16()),
        expires: u64::from(input.u16()),
        seen: u64::from(input.u16()),
        access_token: input.text(),
        access_expires: u64::from(input.u16()),
        refresh_token: (input.u8() & 1 == 1).then(|| input.text()),
        id_token: input.text(),
        identity: vec![(input.text(), input.text())],
    };
    let keys = SessionKeys::new(KEYS.into_iter()).expect("test keys are valid");
    let json = serde_json::to_vec(&s).expect("a session serializes");
    let sealed = keys.seal_with_nonce(session::SESSION, &json, nonce);
    if sealed.len() > MAX_SEALED {
        assert_eq!(keys.open(session::SESSION, &sealed), Err(CookieError::TooLarge));
        return;
    }

    // Carried as chunks in one Cookie header, read back whole.
    let header = cookie::chunks(NAME, &sealed)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    assert_eq!(
        cookie::read_chunked(&[header.as_str()], NAME).as_deref(),
        Some(sealed.as_str())
    );
    let back: Session = session::open(&keys, session::SESSION, &sealed).expect("our own cookie opens");
    assert!(back == s, "the session comes back unchanged");
    assert_eq!(keys.open(session::LOGIN, &sealed), Err(CookieError::Tampered));

    // The attacker's edits.
    let mut edited = sealed.clone().into_bytes();
    while !input.0.is_empty() {
        let op = input.u8();
        let at = usize::from(input.u16()) % (edited.len() + 1);
        let b = input.u8();
        match op % 5 {
            0 if at < edited.len() => edited[at] ^= b.max(1),
            1 if at < edited.len() => edited[at] = b,
            2 => edited.insert(at, b),
            3 if at < edited.len() => {
                edited.remove(at);
            }
            4 => edited.truncate(at),
            _ => {}
        }
    }
    let edited = String::from_utf8_lossy(&edited);
    let opened = keys.open(session::SESSION, &edited);
    if edited == sealed {
        assert_eq!(opened.as_deref(), Ok(json.as_slice()));
    } else {
        assert!(opened.is_err(), "an edited cookie opened: {edited:?}");
    }
    assert!(keys.open(session::LOGIN, &edited).is_err());
});
