//! The header-forwarder filter's configuration parser
//! (`header_forwarder::config::Config::parse`), templates included, on any bytes.
//! Invariants: no panic; an accepted document is accepted again, to the same
//! configuration, when respelled; every header it will set or rename to is a valid,
//! lower-case name that is not hop-by-hop (the host's to manage).
#![no_main]

use header_forwarder::config::{Config, Phase, is_token};
use libfuzzer_sys::fuzz_target;

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

fn settable(name: &str) {
    assert!(
        name == ":authority" || (is_token(name) && name == name.to_ascii_lowercase()),
        "`{name}` would be set"
    );
    assert!(!HOP_BY_HOP.contains(&name), "hop-by-hop `{name}` would be set");
}

fn phase(p: &Phase) {
    p.rename.iter().for_each(|(_, to)| settable(to));
    for (name, _) in p.replace.iter().chain(&p.add).chain(&p.append) {
        settable(name);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(c) = Config::parse(Some(data)) else {
        return;
    };
    portcullis_fuzz::reparses_alike(data, &c, |d| Config::parse(Some(d)));
    phase(&c.request);
    phase(&c.response);
});
