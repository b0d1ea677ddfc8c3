//! The identity contract between filters (docs/architecture.md): an auth filter removes every
//! identity header the client sent, then sets them from verified claims; the other
//! filters read identity only from these headers. Names mirror Kong's defaults.

pub const CONSUMER_ID: &str = "x-consumer-id";
pub const CONSUMER_USERNAME: &str = "x-consumer-username";
pub const CONSUMER_GROUPS: &str = "x-consumer-groups";
pub const CREDENTIAL_IDENTIFIER: &str = "x-credential-identifier";
pub const CONSUMER_TIER: &str = "x-consumer-tier";

/// The stream property (Envoy filter state) where an auth filter leaves the credential
/// it verified, so `header-forwarder` can make sure the upstream receives that one.
pub const CREDENTIAL_PROPERTY: &str = "portcullis.credential";

/// The stream property saying what kind of credential `CREDENTIAL_PROPERTY` holds when
/// it is not a bearer token: [`API_KEY`] (set by `key-auth`). Absent: a bearer token,
/// which `header-forwarder` forwards as `Authorization`; an API key it leaves where the
/// client put it (or where `hide_credentials` took it from).
pub const CREDENTIAL_KIND_PROPERTY: &str = "portcullis.credential_kind";

/// [`CREDENTIAL_KIND_PROPERTY`]'s value for an API key.
pub const API_KEY: &str = "api_key";

/// Every identity header, in the order an auth filter strips them.
pub const ALL: [&str; 5] = [
    CONSUMER_ID,
    CONSUMER_USERNAME,
    CONSUMER_GROUPS,
    CREDENTIAL_IDENTIFIER,
    CONSUMER_TIER,
];

/// Also when written with `_` for `-` (`x_consumer_id`), which CGI-style upstreams
/// read as the same header.
pub fn is_identity_header(name: &str) -> bool {
    ALL.iter()
        .any(|h| h.len() == name.len() && spelt_as(h, name))
}

/// Whether `name` starts with the contract's `name`, in any case and with `_` for
/// `-`, without making a copy of it (the gateway asks of every client header).
fn spelt_as(contract: &str, name: &str) -> bool {
    name.len() >= contract.len()
        && contract
            .bytes()
            .zip(name.bytes())
            .all(|(a, b)| a.eq_ignore_ascii_case(&b) || (a == b'-' && b == b'_'))
}

/// `x-anonymous-consumer` (Kong's): part of the identity contract as the gateway reads
/// it, though no Portcullis filter sets it.
pub const ANONYMOUS_CONSUMER: &str = "x-anonymous-consumer";

/// Whether `name` belongs to the identity contract as the gateway's edge reads it (and
/// removes from every client request): the whole `x-consumer-` family
/// (`x-consumer-custom-id` too), `x-credential-identifier` and `x-anonymous-consumer`,
/// in any case and with `_` for `-`. Only an auth filter sets these; a filter that
/// merely transforms headers must neither write them nor pass one on unverified.
pub fn is_identity_name(name: &str) -> bool {
    let whole = |h: &str| h.len() == name.len() && spelt_as(h, name);
    spelt_as("x-consumer-", name) || whole(CREDENTIAL_IDENTIFIER) || whole(ANONYMOUS_CONSUMER)
}

#[cfg(test)]
mod tests {
    #[test]
    fn identity_headers_match_case_insensitively() {
        assert!(super::is_identity_header("X-Consumer-Tier"));
        assert!(!super::is_identity_header("x-consumer"));
        assert!(super::is_identity_header("X_Consumer_Id"));
        assert!(!super::is_identity_header("x_consumer"));
    }

    #[test]
    fn the_identity_family_is_every_name_the_edge_removes() {
        for n in [
            "x-consumer-id",
            "X_Consumer_Custom_Id",
            "x-credential-identifier",
            "x_anonymous_consumer",
        ] {
            assert!(super::is_identity_name(n), "{n}");
        }
        for n in ["x-consumer", "x-consumers-id", "x-user-id", "authorization"] {
            assert!(!super::is_identity_name(n), "{n}");
        }
    }
}
