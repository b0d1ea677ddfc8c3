//! The header-forwarder filter's configuration parser
//! (`header_forwarder::config::Config::parse`), templates included, on any bytes.
//! Invariants: no panic; an accepted document is accepted again, to the same
//! configuration, when respelled; every header it will set or rename to is a valid,
//! lower-case name that is not hop-by-hop (the host's to manage), and in the request
//! not an identity header; no template reads an identity header with `$(headers.…)`.
#![no_main]

use header_forwarder::config::{Config, Phase, is_token};
use header_forwarder::template::{Part, Source};
use kit::identity::is_identity_name;
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
    assert!(
        !HOP_BY_HOP.contains(&name),
        "hop-by-hop `{name}` would be set"
    );
}

fn phase(p: &Phase, request: bool) {
    p.rename.iter().for_each(|(_, to)| settable(to));
    for (name, _) in p.replace.iter().chain(&p.add).chain(&p.append) {
        settable(name);
    }
    if request {
        for name in p.rename.iter().map(|(_, to)| to).chain(
            p.replace
                .iter()
                .chain(&p.add)
                .chain(&p.append)
                .map(|(n, _)| n),
        ) {
            assert!(
                !is_identity_name(name),
                "identity header `{name}` would be set"
            );
        }
    }
    let templates = p.replace.iter().chain(&p.add).chain(&p.append);
    let queries = p
        .query_replace
        .iter()
        .chain(&p.query_add)
        .chain(&p.query_append);
    for (_, t) in templates.chain(queries) {
        for part in &t.parts {
            if let Part::Ref(Source::Header(h)) = part {
                assert!(!is_identity_name(h), "`$(headers.{h})` would be read");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(c) = Config::parse(Some(data)) else {
        return;
    };
    portcullis_fuzz::reparses_alike(data, &c, |d| Config::parse(Some(d)));
    phase(&c.request, true);
    phase(&c.response, false);
});
