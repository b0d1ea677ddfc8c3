//! `proxy_get_property`: the attribute paths Envoy exposes, encoded as Envoy encodes
//! them (strings raw, integers as 8 little-endian bytes, times as i64 nanoseconds,
//! maps in the header-map format).

use crate::abi::encode_pairs;
use crate::headers::HeaderMap;
use crate::state::{HostState, Phase};

/// The first segments of the attributes Envoy answers itself. Under them a property a
/// filter sets is kept but never read back in the attribute's place (Envoy keeps
/// filters' properties apart, in its filter state): a filter cannot make a later one
/// read a forged `source.address` or `request.path`.
const ROOTS: [&[u8]; 17] = [
    b"request",
    b"response",
    b"connection",
    b"connection_id",
    b"upstream",
    b"source",
    b"destination",
    b"metadata",
    b"filter_state",
    b"node",
    b"listener_direction",
    b"listener_metadata",
    b"cluster_name",
    b"cluster_metadata",
    b"route_name",
    b"route_metadata",
    b"upstream_host_metadata",
];

/// The value at `raw`, the path as the call passed it (segments NUL-separated), or
/// `None` for an unknown or absent attribute (`NotFound`). Properties filters set are
/// looked up by the raw path as it is, outside the built-in attributes' [`ROOTS`].
pub fn get(state: &HostState, raw: &[u8]) -> Option<Vec<u8>> {
    let env = &state.env;
    match raw {
        b"plugin_name" => return Some(env.name.clone().into_bytes()),
        b"plugin_root_id" => return Some(env.root_id.clone().into_bytes()),
        b"plugin_vm_id" => return Some(env.vm_id.clone().into_bytes()),
        _ => {}
    }
    // A root context holds no request properties (Envoy: `NotFound`).
    let ctx = state.http.get(state.effective)?;
    let segments: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
    if !ROOTS.contains(&segments[0]) {
        return ctx.properties.lock().get(raw).cloned();
    }
    let path = segments.as_slice();
    let info = &ctx.info;
    // Request headers as they are now when this filter holds them, otherwise as they
    // arrived (Envoy reads the live stream's headers; between filters ours are in
    // flight, so the arrival copy in RequestInfo stands in).
    let live = ctx
        .request_headers
        .as_ref()
        .filter(|_| ctx.phase != Phase::Response);
    let header = |name: &str| -> Option<Vec<u8>> {
        match live {
            Some(h) => h.get(name).map(<[u8]>::to_vec),
            None => info_header(info, name),
        }
    };
    match path {
        [b"request", b"path"] => header(":path"),
        [b"request", b"url_path"] => header(":path").map(|p| strip_query(&p).to_vec()),
        [b"request", b"query"] => header(":path").map(|p| {
            p.iter()
                .position(|&c| c == b'?')
                .map_or(Vec::new(), |i| p[i + 1..].to_vec())
        }),
        [b"request", b"host"] => header(":authority"),
        [b"request", b"method"] => header(":method"),
        [b"request", b"scheme"] => {
            header(":scheme").or_else(|| Some(info.scheme.clone().into_bytes()))
        }
        [b"request", b"referer"] => header("referer"),
        [b"request", b"useragent"] => header("user-agent"),
        [b"request", b"id"] => {
            header("x-request-id").or_else(|| Some(info.id.clone().into_bytes()))
        }
        [b"request", b"protocol"] => Some(info.protocol.clone().into_bytes()),
        [b"request", b"time"] => Some((info.start_unix_ns as i64).to_le_bytes().to_vec()),
        [b"request", b"headers"] => {
            let h = live?;
            Some(encode_map(h))
        }
        [b"response", b"code"] => ctx.response_code.map(|c| (c as i64).to_le_bytes().to_vec()),
        [b"response", b"headers"] => ctx.response_headers.as_ref().map(encode_map),
        [b"source", b"address"] => info.source.map(|a| a.to_string().into_bytes()),
        [b"source", b"port"] => info
            .source
            .map(|a| (a.port() as i64).to_le_bytes().to_vec()),
        [b"destination", b"address"] => info.destination.map(|a| a.to_string().into_bytes()),
        [b"destination", b"port"] => info
            .destination
            .map(|a| (a.port() as i64).to_le_bytes().to_vec()),
        _ => None,
    }
}

fn info_header(info: &crate::types::RequestInfo, name: &str) -> Option<Vec<u8>> {
    let v = match name {
        ":path" => &info.path,
        ":authority" => &info.host,
        ":method" => &info.method,
        _ => return None,
    };
    (!v.is_empty()).then(|| v.clone().into_bytes())
}

fn strip_query(p: &[u8]) -> &[u8] {
    match p.iter().position(|&c| c == b'?') {
        Some(i) => &p[..i],
        None => p,
    }
}

fn encode_map(h: &HeaderMap) -> Vec<u8> {
    encode_pairs(h.iter_bytes())
}
