//! The proxy-wasm ABI 0.2.1 numbers and byte encodings, exactly as Envoy uses them.

/// Result of a host call (`WasmResult` in proxy-wasm-cpp-host).
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

impl Status {
    pub fn code(self) -> u32 {
        self as u32
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum MapType {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    GrpcInitialMetadata,
    GrpcTrailingMetadata,
    HttpCallResponseHeaders,
    HttpCallResponseTrailers,
}

impl MapType {
    pub fn from_abi(v: u32) -> Option<Self> {
        Some(match v {
            0 => MapType::RequestHeaders,
            1 => MapType::RequestTrailers,
            2 => MapType::ResponseHeaders,
            3 => MapType::ResponseTrailers,
            4 => MapType::GrpcInitialMetadata,
            5 => MapType::GrpcTrailingMetadata,
            6 => MapType::HttpCallResponseHeaders,
            7 => MapType::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BufferType {
    RequestBody,
    ResponseBody,
    DownstreamData,
    UpstreamData,
    HttpCallResponseBody,
    GrpcReceiveBuffer,
    VmConfiguration,
    PluginConfiguration,
    CallData,
}

impl BufferType {
    pub fn from_abi(v: u32) -> Option<Self> {
        Some(match v {
            0 => BufferType::RequestBody,
            1 => BufferType::ResponseBody,
            2 => BufferType::DownstreamData,
            3 => BufferType::UpstreamData,
            4 => BufferType::HttpCallResponseBody,
            5 => BufferType::GrpcReceiveBuffer,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            8 => BufferType::CallData,
            _ => return None,
        })
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StreamType {
    Request,
    Response,
    Downstream,
    Upstream,
}

impl StreamType {
    pub fn from_abi(v: u32) -> Option<Self> {
        Some(match v {
            0 => StreamType::Request,
            1 => StreamType::Response,
            2 => StreamType::Downstream,
            3 => StreamType::Upstream,
            _ => return None,
        })
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub fn from_abi(v: u32) -> Option<Self> {
        Some(match v {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

/// What a stream callback asks of the host. Envoy maps the header/body statuses
/// `StopIteration`, `StopAllIterationAndBuffer` and `StopAllIterationAndWatermark` to a
/// pause and `ContinueAndEndStream` to a continue; any other value is a broken reply.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

impl Action {
    pub fn from_abi(v: u32) -> Option<Self> {
        match v {
            0 | 2 => Some(Action::Continue),
            1 | 3 | 4 => Some(Action::Pause),
            _ => None,
        }
    }
}

/// Why a header-map or property blob from the guest could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError;

/// Encodes pairs in the proxy-wasm map format: u32 count, then (u32 key length, u32
/// value length) per pair, then each key and value followed by a NUL byte; little-endian.
pub fn encode_pairs<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let mut count = 0u32;
    let mut size = 4usize;
    for (k, v) in pairs.clone() {
        count += 1;
        size += 8 + k.len() + v.len() + 2;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&count.to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// A decoded map: its (name, value) pairs, borrowed from the buffer.
pub type Pairs<'a> = Vec<(&'a [u8], &'a [u8])>;

/// Decodes the map format, checking every length against the buffer before use, so a
/// hostile count or length is an error and never a large allocation or a panic.
pub fn decode_pairs(buf: &[u8]) -> Result<Pairs<'_>, DecodeError> {
    if buf.is_empty() {
        return Ok(Vec::new());
    }
    let count = read_u32(buf, 0)? as usize;
    // Each pair needs at least 8 bytes of sizes and 2 NULs.
    let sizes_end = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .ok_or(DecodeError)?;
    if count.checked_mul(10).is_none_or(|min| min + 4 > buf.len()) {
        return Err(DecodeError);
    }
    let mut pairs = Vec::with_capacity(count);
    let mut data = sizes_end;
    for i in 0..count {
        let klen = read_u32(buf, 4 + i * 8)? as usize;
        let vlen = read_u32(buf, 8 + i * 8)? as usize;
        let key = slice(buf, data, klen)?;
        data += klen + 1;
        let value = slice(buf, data, vlen)?;
        data += vlen + 1;
        pairs.push((key, value));
    }
    Ok(pairs)
}

fn read_u32(buf: &[u8], at: usize) -> Result<u32, DecodeError> {
    let b = buf.get(at..at + 4).ok_or(DecodeError)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

// A key or value plus its NUL terminator must lie inside the buffer.
fn slice(buf: &[u8], at: usize, len: usize) -> Result<&[u8], DecodeError> {
    let end = at.checked_add(len).ok_or(DecodeError)?;
    if end >= buf.len() {
        return Err(DecodeError);
    }
    Ok(&buf[at..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b":path", b"/x"), (b"k", b""), (b"", b"v")];
        let enc = encode_pairs(pairs.iter().copied());
        let dec = decode_pairs(&enc).unwrap();
        assert_eq!(dec, pairs);
    }

    #[test]
    fn hostile_counts_and_lengths_are_refused() {
        assert_eq!(decode_pairs(&u32::MAX.to_le_bytes()), Err(DecodeError));
        let mut enc = encode_pairs([(&b"a"[..], &b"b"[..])].into_iter());
        enc[4] = 200; // key length past the end
        assert_eq!(decode_pairs(&enc), Err(DecodeError));
        assert_eq!(decode_pairs(&[1, 0, 0]), Err(DecodeError));
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics_and_stays_in_bounds(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            if let Ok(pairs) = decode_pairs(&bytes) {
                let total: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
                proptest::prop_assert!(total <= bytes.len());
            }
        }

        #[test]
        fn any_map_round_trips(pairs in proptest::collection::vec((proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)), 0..20)) {
            let enc = encode_pairs(pairs.iter().map(|(k, v)| (&k[..], &v[..])));
            let owned: Vec<(Vec<u8>, Vec<u8>)> = decode_pairs(&enc)
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect();
            proptest::prop_assert_eq!(owned, pairs);
        }

        #[test]
        fn any_single_byte_change_is_decoded_or_refused_never_panics(pairs in proptest::collection::vec((proptest::collection::vec(proptest::prelude::any::<u8>(), 0..10), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..10)), 1..5), at in 0usize..200, to in proptest::prelude::any::<u8>()) {
            let mut enc = encode_pairs(pairs.iter().map(|(k, v)| (&k[..], &v[..])));
            let i = at % enc.len();
            enc[i] = to;
            let _ = decode_pairs(&enc);
        }
    }

    #[test]
    fn empty_buffer_is_an_empty_map() {
        assert!(decode_pairs(&[]).unwrap().is_empty());
    }
}
