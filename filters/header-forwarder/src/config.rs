//! The configuration: Kong's request-transformer / response-transformer shape, for
//! requests and responses. Checked whole at load: header names are HTTP tokens, values
//! are field values, pseudo-headers and hop-by-hop headers cannot be set, and neither
//! can an identity header in the request (`kit::identity::is_identity_name`).

use std::collections::BTreeMap;

use kit::config::ConfigError;
use serde::Deserialize;

use crate::template::Template;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub request: PhaseFile,
    #[serde(default)]
    pub response: PhaseFile,
    /// The upstream gets the credential the auth filter verified, whatever else the
    /// transforms or the client did to `authorization` (default true).
    #[serde(default)]
    pub forward_authorization: Option<bool>,
    /// What a template with a missing value gives: `skip` the header (default) or an
    /// `empty` value.
    #[serde(default)]
    pub missing: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PhaseFile {
    #[serde(default)]
    pub remove: ListOps,
    #[serde(default)]
    pub rename: MapOps,
    #[serde(default)]
    pub replace: MapOps,
    #[serde(default)]
    pub add: MapOps,
    #[serde(default)]
    pub append: MapOps,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListOps {
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub querystring: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MapOps {
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub querystring: BTreeMap<String, String>,
}

/// One phase's operations, in Kong's order: remove, rename, replace (only when
/// present), add (only when absent), append.
#[derive(Debug, Default)]
pub struct Phase {
    pub remove: Vec<String>,
    pub rename: Vec<(String, String)>,
    pub replace: Vec<(String, Template)>,
    pub add: Vec<(String, Template)>,
    pub append: Vec<(String, Template)>,
    pub query_remove: Vec<String>,
    pub query_rename: Vec<(String, String)>,
    pub query_replace: Vec<(String, Template)>,
    pub query_add: Vec<(String, Template)>,
    pub query_append: Vec<(String, Template)>,
}

impl Phase {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.replace.is_empty()
            && self.add.is_empty()
            && self.append.is_empty()
            && self.query_remove.is_empty()
            && self.query_rename.is_empty()
            && self.query_replace.is_empty()
            && self.query_add.is_empty()
            && self.query_append.is_empty()
    }

    /// Whether any value reads the request (so the response phase needs a copy).
    pub fn uses_templates(&self) -> bool {
        self.replace
            .iter()
            .chain(&self.add)
            .chain(&self.append)
            .any(|(_, t)| !t.is_literal())
    }
}

#[derive(Debug, Default)]
pub struct Config {
    pub request: Phase,
    pub response: Phase,
    pub forward_authorization: bool,
    pub skip_missing: bool,
}

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

/// RFC 9110 token characters.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// RFC 9110 field-value characters: visible ASCII, space, tab, obs-text; never CR, LF
/// or NUL.
pub fn is_field_value(s: &str) -> bool {
    s.bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

impl Config {
    pub fn parse(bytes: Option<&[u8]>) -> Result<Config, ConfigError> {
        let file: ConfigFile = kit::config::parse(bytes)?;
        let skip_missing = match file.missing.as_deref() {
            None | Some("skip") => true,
            Some("empty") => false,
            Some(other) => {
                return Err(ConfigError::field(
                    "missing",
                    format!("`{other}`: expected `skip` or `empty`"),
                ));
            }
        };
        Ok(Config {
            request: phase(file.request, "request", true)?,
            response: phase(file.response, "response", false)?,
            forward_authorization: file.forward_authorization.unwrap_or(true),
            skip_missing,
        })
    }
}

/// The header a name stands for: `host` is the request's `:authority` (Kong users write
/// `host`; proxy-wasm hosts keep it as the pseudo-header).
fn target(name: &str, request: bool) -> String {
    let n = name.to_ascii_lowercase();
    if request && n == "host" {
        ":authority".into()
    } else {
        n
    }
}

fn settable(name: &str, field: &str, request: bool) -> Result<String, ConfigError> {
    if !is_token(name) {
        return Err(ConfigError::field(
            field,
            format!("`{name}` is not a valid header name"),
        ));
    }
    // Upstreams believe these: only an auth filter sets them, from what it verified.
    if request && kit::identity::is_identity_name(name) {
        return Err(ConfigError::field(
            field,
            format!(
                "`{name}` is an identity header: only an auth filter sets it (read the verified identity with $(consumer.id|username|groups|tier))"
            ),
        ));
    }
    let t = target(name, request);
    if HOP_BY_HOP.contains(&t.as_str()) {
        return Err(ConfigError::field(
            field,
            format!("`{name}` is a hop-by-hop header and cannot be set"),
        ));
    }
    if !request && (t == "content-length") {
        return Err(ConfigError::field(
            field,
            "`content-length` is the host's to set",
        ));
    }
    Ok(t)
}

fn values(
    ops: BTreeMap<String, String>,
    field: &str,
    request: bool,
    header: bool,
) -> Result<Vec<(String, Template)>, ConfigError> {
    let mut out = Vec::new();
    for (k, v) in ops {
        let f = format!("{field}.{k}");
        let name = if header {
            settable(&k, &f, request)?
        } else {
            k
        };
        if !is_field_value(&v) {
            return Err(ConfigError::field(
                &f,
                "the value has a control character (CR, LF, NUL)",
            ));
        }
        out.push((name, Template::parse(&v, &f)?));
    }
    Ok(out)
}

fn phase(p: PhaseFile, prefix: &str, request: bool) -> Result<Phase, ConfigError> {
    let mut remove = Vec::new();
    for h in p.remove.headers {
        if !is_token(&h) {
            return Err(ConfigError::field(
                format!("{prefix}.remove.headers"),
                format!("`{h}` is not a valid header name"),
            ));
        }
        remove.push(target(&h, request));
    }
    let mut rename = Vec::new();
    for (from, to) in p.rename.headers {
        let f = format!("{prefix}.rename.headers.{from}");
        if !is_token(&from) {
            return Err(ConfigError::field(
                &f,
                format!("`{from}` is not a valid header name"),
            ));
        }
        rename.push((target(&from, request), settable(&to, &f, request)?));
    }
    if !request
        && !(p.remove.querystring.is_empty()
            && p.rename.querystring.is_empty()
            && p.replace.querystring.is_empty()
            && p.add.querystring.is_empty()
            && p.append.querystring.is_empty())
    {
        return Err(ConfigError::field(
            format!("{prefix}.querystring"),
            "a response has no query string",
        ));
    }
    Ok(Phase {
        remove,
        rename,
        replace: values(
            p.replace.headers,
            &format!("{prefix}.replace.headers"),
            request,
            true,
        )?,
        add: values(
            p.add.headers,
            &format!("{prefix}.add.headers"),
            request,
            true,
        )?,
        append: values(
            p.append.headers,
            &format!("{prefix}.append.headers"),
            request,
            true,
        )?,
        query_remove: p.remove.querystring,
        query_rename: p.rename.querystring.into_iter().collect(),
        query_replace: values(
            p.replace.querystring,
            &format!("{prefix}.replace.querystring"),
            request,
            false,
        )?,
        query_add: values(
            p.add.querystring,
            &format!("{prefix}.add.querystring"),
            request,
            false,
        )?,
        query_append: values(
            p.append.querystring,
            &format!("{prefix}.append.querystring"),
            request,
            false,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(json: &str) -> String {
        match Config::parse(Some(json.as_bytes())) {
            Ok(_) => panic!("accepted: {json}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn identity_headers_are_never_a_target_of_the_request_phase() {
        for (json, field) in [
            (
                r#"{"request": {"add": {"headers": {"x-consumer-id": "admin"}}}}"#,
                "request.add.headers.x-consumer-id",
            ),
            (
                r#"{"request": {"replace": {"headers": {"X-Consumer-Groups": "admin"}}}}"#,
                "request.replace.headers.X-Consumer-Groups",
            ),
            (
                r#"{"request": {"append": {"headers": {"x_consumer_tier": "gold"}}}}"#,
                "request.append.headers.x_consumer_tier",
            ),
            (
                r#"{"request": {"add": {"headers": {"x-consumer-custom-id": "1"}}}}"#,
                "request.add.headers.x-consumer-custom-id",
            ),
            (
                r#"{"request": {"add": {"headers": {"x-credential-identifier": "$(headers.x-org)"}}}}"#,
                "request.add.headers.x-credential-identifier",
            ),
            (
                r#"{"request": {"add": {"headers": {"x-anonymous-consumer": "false"}}}}"#,
                "request.add.headers.x-anonymous-consumer",
            ),
            (
                r#"{"request": {"rename": {"headers": {"x-user": "x-consumer-username"}}}}"#,
                "request.rename.headers.x-user",
            ),
        ] {
            let e = refused(json);
            assert!(
                e.contains(field) && e.contains("identity header"),
                "{json}: {e}"
            );
        }
        // Reading the verified identity, or removing an identity header, is fine.
        Config::parse(Some(
            br#"{"request": {"add": {"headers": {"x-user": "$(consumer.username)"}},
                "remove": {"headers": ["x-consumer-tier"]},
                "rename": {"headers": {"x-consumer-id": "x-user-id"}}},
              "response": {"add": {"headers": {"x-consumer": "$(consumer.id)"}}}}"#,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_template_never_reads_an_identity_header_unverified() {
        for (json, field) in [
            (
                r#"{"request": {"add": {"headers": {"x-user": "$(headers.x-consumer-id)"}}}}"#,
                "request.add.headers.x-user",
            ),
            (
                r#"{"request": {"add": {"querystring": {"u": "$(headers.X_Consumer_Username)"}}}}"#,
                "request.add.querystring.u",
            ),
            (
                r#"{"response": {"add": {"headers": {"x-who": "who: $(headers.x-credential-identifier)"}}}}"#,
                "response.add.headers.x-who",
            ),
        ] {
            let e = refused(json);
            assert!(
                e.contains(field) && e.contains("$(consumer."),
                "{json}: {e}"
            );
        }
    }
}
