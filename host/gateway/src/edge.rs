//! What the gateway settles about a client's request before routing and before any
//! filter runs: that the Host is a host, which forwarding headers to believe, who the
//! client is, and that no identity header the client wrote survives.
//!
//! `X-Forwarded-For`, `-Host`, `-Proto`, `-Port`, `Forwarded` and `X-Real-IP` are
//! believed only from a peer in the listener's `trusted_proxies` (Kong's
//! `trusted_ips`); from anyone else they are replaced with what the gateway itself
//! saw. The client's address is then the right-most address of the trusted chain that
//! is not itself a trusted proxy (Kong's `real_ip_recursive`), else the peer. Spelt with
//! `_` (`x_forwarded_host`) they are removed whoever sent them.
//!
//! The identity contract's headers (`x-consumer-*`, `x-credential-identifier`,
//! `x-anonymous-consumer`, and the names configured in `identity_headers`) are set
//! only by an auth filter from a verified credential. The gateway removes them from
//! every client request, so no route, no filter order and no `fail_open` can let a
//! client's own identity through; only a route marked `trust_identity_headers`, reached
//! through a trusted proxy, keeps them.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use ipnet::IpNet;

/// Headers a client may use to say where a request came from.
// Names made at compile time: a name given as a string is parsed on every use.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

const FORWARDING: [HeaderName; 6] = [
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    X_FORWARDED_PORT,
    http::header::FORWARDED,
    X_REAL_IP,
];

/// A listener's trusted proxies.
#[derive(Debug, Clone, Default)]
pub struct Trusted {
    nets: Vec<IpNet>,
}

impl Trusted {
    pub fn new(nets: Vec<IpNet>) -> Trusted {
        Trusted { nets }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`, as a dual-stack socket reports
/// it) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Parses a CIDR (`10.0.0.0/8`) or a single address (`10.1.2.3`, a /32 or /128).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{s}` is not an IP address or CIDR"))
}

/// What the edge decided about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The client as far as trusted proxies tell (the peer when they tell nothing).
    pub client: SocketAddr,
    /// Whether the connection came from a trusted proxy.
    pub trusted: bool,
}

/// The forwarding headers the upstream and the filters get, and the client's address.
pub fn forwarding(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    local: SocketAddr,
    tls: bool,
    host: &str,
    trusted: &Trusted,
) -> Peer {
    let scheme = if tls { "https" } else { "http" };
    let from_proxy = trusted.contains(peer.ip());
    let peer_ip = canonical(peer.ip());
    if !from_proxy {
        for h in &FORWARDING {
            headers.remove(h);
        }
    }
    strip_underscore_forwarding(headers);
    // The chain so far: every X-Forwarded-For line, in order, then the peer.
    let mut chain: Vec<String> = Vec::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(v) = v.to_str() {
            chain.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
        }
    }
    chain.push(peer_ip.to_string());
    // The peer keeps its port; an address from the chain has none.
    let client = match client_of(&chain, trusted) {
        Some((i, ip)) if i + 1 < chain.len() => SocketAddr::new(ip, 0),
        _ => SocketAddr::new(peer_ip, peer.port()),
    };
    set(headers, X_FORWARDED_FOR, &chain.join(", "));
    let keep = |headers: &HeaderMap, name: &HeaderName| from_proxy && headers.contains_key(name);
    if !keep(headers, &X_FORWARDED_PROTO) {
        set(headers, X_FORWARDED_PROTO, scheme);
    }
    if !keep(headers, &X_FORWARDED_HOST) {
        set(headers, X_FORWARDED_HOST, host);
    }
    if !keep(headers, &X_FORWARDED_PORT) {
        set(headers, X_FORWARDED_PORT, &local.port().to_string());
    }
    set(headers, X_REAL_IP, &client.ip().to_string());
    Peer {
        client,
        trusted: from_proxy,
    }
}

/// The right-most address of the chain that is not a trusted proxy (the left-most
/// when all are), with its position; `None` when an entry that matters is not an
/// address.
fn client_of(chain: &[String], trusted: &Trusted) -> Option<(usize, IpAddr)> {
    let mut last = None;
    for (i, entry) in chain.iter().enumerate().rev() {
        let ip = parse_hop(entry)?;
        last = Some((i, ip));
        if !trusted.contains(ip) {
            return last;
        }
    }
    last
}

/// An X-Forwarded-For entry: an address, possibly with a port (`1.2.3.4:80`,
/// `[::1]:80`).
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    s.parse::<SocketAddr>().ok().map(|a| canonical(a.ip()))
}

/// Removes the forwarding headers spelt with `_` (`x_forwarded_host`), whoever sent
/// them: an upstream that reads `_` as `-` could take one for the header the gateway
/// set or checked, and the gateway believes only the `-` spelling, even from a proxy.
fn strip_underscore_forwarding(headers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let name = k.as_str();
            name.contains('_') && FORWARDING.iter().any(|f| f.as_str() == fold(name))
        })
        .cloned()
        .collect();
    for k in doomed {
        headers.remove(k);
    }
}

/// Whether `authority` (a Host, an `:authority`) is `host[:port]` and nothing else: a
/// name of RFC 3986's unreserved characters (letters, digits, `-._~`) or a bracketed
/// IPv6 address, then a port of digits. Narrower than RFC 3986's reg-name, which also
/// allows sub-delimiters and escapes: no DNS name has them, and in `X-Forwarded-Host` a
/// `,` splits the value (Express reads `evil.com,.example.com` as `evil.com`). Empty is
/// allowed: an HTTP/1.0 request has no Host.
pub fn valid_host(authority: &str) -> bool {
    if authority.is_empty() {
        return true;
    }
    let (host_ok, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some((ip, port)) = rest.split_once(']') else {
            return false;
        };
        (ip.parse::<std::net::Ipv6Addr>().is_ok(), port)
    } else {
        let (name, port) = authority.split_at(authority.find(':').unwrap_or(authority.len()));
        let unreserved = |c: u8| c.is_ascii_alphanumeric() || b"-._~".contains(&c);
        // No empty label but the root's (one trailing dot): `.admin.example.com` and
        // `admin..example.com` are no DNS names, and an upstream might read either as
        // `admin.example.com` where the gateway's routes do not.
        let labels = name.strip_suffix('.').unwrap_or(name);
        let labelled = !labels.split('.').any(str::is_empty);
        (labelled && name.bytes().all(unreserved), port)
    };
    host_ok
        && (port.is_empty()
            || port
                .strip_prefix(':')
                .is_some_and(|p| p.bytes().all(|c| c.is_ascii_digit()) && p.parse::<u16>().is_ok()))
}

/// The host routing, the filters and the upstream get: `authority` if [`valid_host`],
/// less one trailing dot on the name (`admin.example.com.:8080` is
/// `admin.example.com:8080`), as Envoy's `strip_trailing_host_dot` does. DNS and most
/// upstreams read the fully-qualified name as the plain one, so with the dot it would
/// miss the host's route and take a catch-all, without the host's auth filters.
/// `None` for an invalid host (a lone dot or a name ending in two dots among them: no
/// DNS name has an empty label, and an upstream that drops one dot would still see the
/// name).
pub fn normalize_host(authority: &str) -> Option<Cow<'_, str>> {
    if !valid_host(authority) {
        return None;
    }
    if authority.starts_with('[') {
        return Some(Cow::Borrowed(authority));
    }
    let (name, port) = authority.split_at(authority.find(':').unwrap_or(authority.len()));
    // `valid_host` refused a lone dot and a name ending in two.
    match name.strip_suffix('.') {
        None => Some(Cow::Borrowed(authority)),
        Some(bare) => Some(Cow::Owned(format!("{bare}{port}"))),
    }
}

/// `name` with `_` read as `-`, as CGI, WSGI, PHP and Rack read it (and nginx with
/// `underscores_in_headers`).
fn fold(name: &str) -> Cow<'_, str> {
    if name.contains('_') {
        Cow::Owned(name.replace('_', "-"))
    } else {
        Cow::Borrowed(name)
    }
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// Whether `name` (lower case) is an identity header of the contract
/// (`kit::identity::is_identity_name`, as the filters read it) or one of the
/// configured extra names, also when written with `_` for `-` (`x_consumer_id`):
/// CGI, WSGI and PHP read both spellings as one variable, so an upstream could take a
/// client's underscore spelling for the verified header.
pub fn is_identity(name: &str, extra: &[String]) -> bool {
    kit::identity::is_identity_name(name) || {
        let name = &*fold(name);
        extra.iter().any(|e| e == name)
    }
}

/// Removes every identity header a client sent.
pub fn strip_identity(headers: &mut HeaderMap, extra: &[String]) {
    let doomed: Vec<http::HeaderName> = headers
        .keys()
        .filter(|k| is_identity(k.as_str(), extra))
        .cloned()
        .collect();
    for k in doomed {
        headers.remove(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn trusted(nets: &[&str]) -> Trusted {
        Trusted::new(nets.iter().map(|n| parse_net(n).unwrap()).collect())
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn get(h: &HeaderMap, k: &str) -> Option<String> {
        h.get(k).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn an_untrusted_client_cannot_forge_forwarding_headers() {
        let mut h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-port", "1"),
            ("forwarded", "for=1.1.1.1;host=evil.example"),
            ("x-real-ip", "1.1.1.1"),
        ]);
        let p = forwarding(
            &mut h,
            addr("203.0.113.9:5555"),
            addr("127.0.0.1:8080"),
            false,
            "api.example.com",
            &trusted(&["10.0.0.0/8"]),
        );
        assert_eq!(p.client, addr("203.0.113.9:5555"));
        assert!(!p.trusted);
        assert_eq!(get(&h, "x-forwarded-for").as_deref(), Some("203.0.113.9"));
        assert_eq!(
            get(&h, "x-forwarded-host").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(get(&h, "x-forwarded-proto").as_deref(), Some("http"));
        assert_eq!(get(&h, "x-forwarded-port").as_deref(), Some("8080"));
        assert_eq!(get(&h, "x-real-ip").as_deref(), Some("203.0.113.9"));
        assert_eq!(get(&h, "forwarded"), None);
    }

    #[test]
    fn underscore_spellings_of_forwarding_headers_go_even_from_a_proxy() {
        for peer in ["203.0.113.9:5555", "10.0.0.4:4000"] {
            let mut h = headers(&[
                ("x_forwarded_host", "evil.example"),
                ("x-forwarded_for", "6.6.6.6"),
                ("x_real_ip", "6.6.6.6"),
                ("x_forwarded_proto", "https"),
                ("x_forwarded_port", "1"),
                ("x_request_id", "kept"),
            ]);
            forwarding(
                &mut h,
                addr(peer),
                addr("127.0.0.1:8080"),
                false,
                "api.example.com",
                &trusted(&["10.0.0.0/8"]),
            );
            let underscored: Vec<&str> = h
                .keys()
                .map(|k| k.as_str())
                .filter(|k| k.contains('_'))
                .collect();
            assert_eq!(underscored, ["x_request_id"], "{peer}");
        }
    }

    #[test]
    fn a_trusted_proxy_extends_the_chain_and_names_the_client() {
        let mut h = headers(&[
            ("x-forwarded-for", "198.51.100.7, 10.0.0.2"),
            ("x-forwarded-for", "10.0.0.3"),
            ("x-forwarded-host", "shop.example.com"),
            ("x-forwarded-proto", "https"),
        ]);
        let p = forwarding(
            &mut h,
            addr("10.0.0.4:4000"),
            addr("127.0.0.1:8080"),
            false,
            "internal",
            &trusted(&["10.0.0.0/8"]),
        );
        assert!(p.trusted);
        assert_eq!(p.client.ip(), "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(
            get(&h, "x-forwarded-for").as_deref(),
            Some("198.51.100.7, 10.0.0.2, 10.0.0.3, 10.0.0.4")
        );
        assert_eq!(
            get(&h, "x-forwarded-host").as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(get(&h, "x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(get(&h, "x-real-ip").as_deref(), Some("198.51.100.7"));
    }

    #[test]
    fn a_forged_entry_left_of_an_untrusted_hop_is_ignored() {
        // The client (an untrusted hop) wrote 6.6.6.6 itself; the trusted proxy added
        // the client's real address after it.
        let mut h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7")]);
        let p = forwarding(
            &mut h,
            addr("10.0.0.4:4000"),
            addr("127.0.0.1:8080"),
            false,
            "h",
            &trusted(&["10.0.0.0/8"]),
        );
        assert_eq!(p.client.ip(), "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn mapped_ipv4_and_single_addresses() {
        let t = trusted(&["127.0.0.1", "fd00::/8"]);
        assert!(t.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(t.contains("fd12::1".parse().unwrap()));
        assert!(!t.contains("127.0.0.2".parse().unwrap()));
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("nope").is_err());
        assert_eq!(parse_hop("[::1]:80"), Some("::1".parse().unwrap()));
        assert_eq!(parse_hop("unknown"), None);
    }

    #[test]
    fn hosts_are_host_and_port() {
        for ok in [
            "",
            "a.example.com",
            "A_b-1.Example.COM:8080",
            "127.0.0.1:80",
            "[::1]",
            "[::ffff:10.0.0.1]:443",
            "localhost:65535",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "evil.com/.example.com",
            "a#.example.com",
            "evil.com,.example.com",
            "a%2e.example.com",
            "user@a.example.com",
            "a b",
            "a.example.com:",
            "a.example.com:+80",
            "a.example.com:65536",
            "a:80:80",
            ":80",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[fe80::1%25eth0]",
            "[a.example.com]",
            "caf\u{e9}.example.com",
            ".admin.example.com",
            "admin..example.com",
            "admin.example.com..",
            ".",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }

    #[test]
    fn one_trailing_dot_leaves_the_host() {
        for (given, host) in [
            ("admin.example.com.", "admin.example.com"),
            ("admin.example.com.:8080", "admin.example.com:8080"),
            ("127.0.0.1.:80", "127.0.0.1:80"),
            ("admin.example.com", "admin.example.com"),
            ("[::1]:80", "[::1]:80"),
            ("", ""),
        ] {
            assert_eq!(normalize_host(given).as_deref(), Some(host), "{given}");
        }
        for bad in [
            ".",
            ".:80",
            "admin.example.com..",
            "a..:80",
            "a/.example.com.",
        ] {
            assert_eq!(normalize_host(bad), None, "{bad}");
        }
    }

    #[test]
    fn identity_headers_are_recognised() {
        let extra = vec!["x-user-email".to_owned()];
        let mut h = headers(&[
            ("x-consumer-id", "admin"),
            ("x-consumer-username", "admin"),
            ("x-consumer-custom-id", "1"),
            ("x-credential-identifier", "i"),
            ("x-anonymous-consumer", "false"),
            ("x-user-email", "a@b"),
            ("x-consumerid", "kept"),
            ("accept", "*/*"),
        ]);
        strip_identity(&mut h, &extra);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["accept", "x-consumerid"]);
    }
}
