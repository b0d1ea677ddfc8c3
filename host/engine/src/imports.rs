//! Every host function a proxy-wasm module can import: the `env.proxy_*` calls of ABI
//! 0.2.1 (and the 0.2.0 names), and the WASI preview1 subset Envoy implements.
//!
//! Guest memory is untrusted: every pointer and length is checked against the
//! module's memory before use, and a bad one is `InvalidMemoryAccess`, never a host
//! panic. Returned data goes into memory the guest's own allocator hands out, and
//! that pointer is checked too. What a call would make the host hold is checked
//! against the host's limits (`crate::limits`) before any guest bytes are copied.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Caller, Linker, Module, Val, ValType};

use crate::abi::{self, BufferType, LogLevel, MapType, Status, StreamType};
use crate::headers::{ENTRY_BYTES, HeaderMap};
use crate::limits::{Limit, Refusal};
use crate::metrics::MetricKind;
use crate::shared::{Enqueued, QueueOwner};
use crate::state::{CallbackData, HostState, Outgoing, OutgoingRequest, Phase};
use crate::types::{GrpcCallRequest, HttpCallRequest, LocalReply};

type C<'a> = Caller<'a, HostState>;

/// A host call ends either with a status for the guest or with a trap (the guest
/// broke the ABI in a way the call cannot answer, e.g. its allocator failed).
enum HostErr {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for HostErr {
    fn from(s: Status) -> Self {
        HostErr::Status(s)
    }
}

type R<T> = Result<T, HostErr>;

fn finish(r: R<()>) -> wasmtime::Result<u32> {
    match r {
        Ok(()) => Ok(Status::Ok.code()),
        Err(HostErr::Status(s)) => Ok(s.code()),
        Err(HostErr::Trap(e)) => Err(e),
    }
}

const IMA: Status = Status::InvalidMemoryAccess;

/// A call refused at `limit`: counted and logged (`what` says what was refused), and
/// answered `status`, the call's status for a refusal (see `docs/parity.md`).
fn refuse(s: &HostState, limit: Limit, status: Status, what: impl FnOnce() -> String) -> HostErr {
    s.env.refused(limit, what);
    HostErr::Status(status)
}

/// A refusal from shared data or queues: the ABI's own status as it is, a limit as
/// [`refuse`] answers it.
fn refusal(s: &HostState, r: Refusal, status: Status, what: impl FnOnce() -> String) -> HostErr {
    match r {
        Refusal::Status(st) => HostErr::Status(st),
        Refusal::Limit(limit) => refuse(s, limit, status, what),
    }
}

/// Checks that each (pointer, length) lies in guest memory, without copying, and
/// returns their total length.
fn check_ranges(c: &C, ranges: &[(u32, u32)]) -> Result<usize, Status> {
    let mem = c.data().memory.ok_or(IMA)?;
    let size = mem.data_size(c);
    let mut total = 0usize;
    for &(p, l) in ranges {
        range(p, l, size)?;
        total = total.saturating_add(l as usize);
    }
    Ok(total)
}

/// The text of a log line of `len` bytes of which `bytes` were copied: when it was
/// longer than `log_bytes`, it says so (and the cut is counted as a refusal).
fn log_line(s: &HostState, bytes: &[u8], len: usize) -> String {
    let text = String::from_utf8_lossy(bytes).into_owned();
    if len <= bytes.len() {
        return text;
    }
    s.env
        .refused(Limit::LogBytes, || format!("a log line of {len} bytes cut"));
    format!("{text}... ({len} bytes, cut)")
}

/// Ids one VM's `proxy_define_metric` hands out; past them a definition gets the id
/// its metric already has (Envoy gives a new id every time, and a filter that defines
/// its metrics on every request would otherwise grow this table for ever).
const METRIC_IDS_PER_VM: usize = 65_536;

fn range(ptr: u32, len: u32, size: usize) -> Result<std::ops::Range<usize>, Status> {
    let start = ptr as usize;
    let end = start.checked_add(len as usize).ok_or(IMA)?;
    if end > size {
        return Err(IMA);
    }
    Ok(start..end)
}

fn read(c: &C, ptr: u32, len: u32) -> Result<Vec<u8>, Status> {
    let mem = c.data().memory.ok_or(IMA)?;
    Ok(at(mem.data(c), (ptr, len))?.to_vec())
}

fn read_str(c: &C, ptr: u32, len: u32) -> Result<String, Status> {
    String::from_utf8(read(c, ptr, len)?).map_err(|_| Status::BadArgument)
}

/// A name the guest passes (a queue's, a metric's): its range checked, then refused
/// past `limit` (counted and logged as `call`'s), then copied.
fn read_name(c: &C, (ptr, len): (u32, u32), limit: Limit, call: &str) -> R<String> {
    check_ranges(c, &[(ptr, len)])?;
    let s = c.data();
    if limit
        .value(&s.env.limits)
        .is_some_and(|max| len as usize > max)
    {
        return Err(refuse(s, limit, Status::InternalFailure, || {
            format!("{call} with a name of {len} bytes refused")
        }));
    }
    Ok(read_str(c, ptr, len)?)
}

fn write(c: &mut C, ptr: u32, bytes: &[u8]) -> Result<(), Status> {
    let mem = c.data().memory.ok_or(IMA)?;
    let data = mem.data_mut(c);
    let r = range(ptr, bytes.len() as u32, data.len())?;
    data[r].copy_from_slice(bytes);
    Ok(())
}

fn write_u32(c: &mut C, ptr: u32, v: u32) -> Result<(), Status> {
    write(c, ptr, &v.to_le_bytes())
}

fn write_u64(c: &mut C, ptr: u32, v: u64) -> Result<(), Status> {
    write(c, ptr, &v.to_le_bytes())
}

/// Copies `bytes` into guest memory from the guest's allocator and stores the pointer
/// and size at `ret_ptr` / `ret_size` (the SDK takes ownership of that allocation).
fn give(c: &mut C, bytes: &[u8], ret_ptr: u32, ret_size: u32) -> R<()> {
    // Check the return slots first, so a bad pointer costs no allocation.
    {
        let mem = c.data().memory.ok_or(IMA)?;
        let size = mem.data_size(&*c);
        range(ret_ptr, 4, size)?;
        range(ret_size, 4, size)?;
    }
    let len = u32::try_from(bytes.len()).map_err(|_| Status::InternalFailure)?;
    let alloc = c.data().alloc.clone().ok_or(Status::InternalFailure)?;
    let ptr = alloc.call(&mut *c, len).map_err(HostErr::Trap)?;
    if len > 0 && ptr == 0 {
        return Err(HostErr::Trap(wasmtime::Error::msg(format!(
            "the filter's allocator returned null for {len} bytes (out of memory)"
        ))));
    }
    if write(c, ptr, bytes).is_err() {
        return Err(HostErr::Trap(wasmtime::Error::msg(format!(
            "the filter's allocator returned {ptr:#x}, outside its memory, for {len} bytes"
        ))));
    }
    write_u32(c, ret_ptr, ptr)?;
    write_u32(c, ret_size, len)?;
    Ok(())
}

/// As [`give`], but an empty answer writes nothing at all, as Envoy does for a buffer
/// slice or a status message (the SDK then sees none).
fn give_some(c: &mut C, bytes: &[u8], ret_ptr: u32, ret_size: u32) -> R<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    give(c, bytes, ret_ptr, ret_size)
}

/// Guest memory and the host's state, borrowed together: a call reads its arguments in
/// place (see [`at`]) while it works on the state.
fn guest<'a>(c: &'a mut C) -> Result<(&'a mut [u8], &'a mut HostState), Status> {
    let mem = c.data().memory.ok_or(IMA)?;
    Ok(mem.data_and_store_mut(c))
}

/// The `len` bytes of guest memory at `ptr`, in place.
fn at(data: &[u8], (ptr, len): (u32, u32)) -> Result<&[u8], Status> {
    Ok(&data[range(ptr, len, data.len())?])
}

/// Runs `f` on header map `t` with two ranges of guest memory borrowed in place: a
/// header call costs no copy of its key and value on the way in. The ranges are
/// checked first (`InvalidMemoryAccess`), then the map (`BadArgument`), as when they
/// were copied out.
fn with_map<T>(
    c: &mut C,
    t: MapType,
    a: (u32, u32),
    b: (u32, u32),
    f: impl FnOnce(&mut HeaderMap, &[u8], &[u8]) -> Result<T, Status>,
) -> Result<T, Status> {
    let (data, state) = guest(c)?;
    let (a, b) = (at(data, a)?, at(data, b)?);
    f(map_mut(state, t)?, a, b)
}

/// Adds an entry to map `t`, or replaces its entries of the name (`replace`), unless
/// the map would grow past `header_bytes` (a replacement counts whole, as if nothing
/// were removed; the map is measured again before a refusal).
fn grow_map(
    c: &mut C,
    t: u32,
    key: (u32, u32),
    value: (u32, u32),
    call: &str,
    replace: bool,
) -> R<()> {
    let t = map_type(t)?;
    let limit = c.data().env.limits.header_bytes;
    let extra = key.1 as usize + value.1 as usize;
    let done = with_map(c, t, key, value, |m, k, v| {
        let fits = m.fits(extra, limit);
        match (fits, replace) {
            (false, _) => {}
            (true, false) => m.add(k, v),
            (true, true) => m.set(k, v),
        }
        Ok(fits)
    })?;
    if done {
        return Ok(());
    }
    Err(refuse(
        c.data(),
        Limit::HeaderBytes,
        Status::InternalFailure,
        || format!("{call} of {extra} bytes refused"),
    ))
}

/// A header name passed by the guest, as text (`BadArgument` when not UTF-8).
fn key_str(k: &[u8]) -> Result<&str, Status> {
    std::str::from_utf8(k).map_err(|_| Status::BadArgument)
}

fn map_type(t: u32) -> Result<MapType, Status> {
    MapType::from_abi(t).ok_or(Status::BadArgument)
}

/// Whether `t` is the request's headers or trailers of a stream whose response has
/// begun: the filter may no longer read or change them.
fn request_map_gone(s: &mut HostState, t: MapType) -> bool {
    matches!(t, MapType::RequestHeaders | MapType::RequestTrailers)
        && s.http_ctx().is_some_and(|ctx| ctx.phase == Phase::Response)
}

/// The header map `t` of the effective context, when the filter may touch it now.
fn map_mut(s: &mut HostState, t: MapType) -> Result<&mut HeaderMap, Status> {
    match t {
        MapType::HttpCallResponseHeaders => match &mut s.callback {
            CallbackData::Http(r) => Ok(&mut r.headers),
            _ => Err(Status::BadArgument),
        },
        MapType::HttpCallResponseTrailers => match &mut s.callback {
            CallbackData::Http(r) => Ok(&mut r.trailers),
            _ => Err(Status::BadArgument),
        },
        MapType::GrpcInitialMetadata => match &mut s.callback {
            CallbackData::Grpc { initial, .. } => Ok(initial),
            _ => Err(Status::BadArgument),
        },
        MapType::GrpcTrailingMetadata => match &mut s.callback {
            CallbackData::Grpc { trailing, .. } => Ok(trailing),
            _ => Err(Status::BadArgument),
        },
        _ => {
            let ctx = s.http_ctx().ok_or(Status::BadArgument)?;
            let map = match t {
                // Envoy refuses request headers once the response has begun.
                MapType::RequestHeaders if ctx.phase != Phase::Response => &mut ctx.request_headers,
                MapType::RequestTrailers if ctx.phase != Phase::Response => {
                    &mut ctx.request_trailers
                }
                MapType::ResponseHeaders => &mut ctx.response_headers,
                MapType::ResponseTrailers => &mut ctx.response_trailers,
                _ => return Err(Status::BadArgument),
            };
            map.as_mut().ok_or(Status::BadArgument)
        }
    }
}

fn buffer(s: &mut HostState, t: BufferType) -> Result<&mut Vec<u8>, Status> {
    match t {
        BufferType::RequestBody | BufferType::ResponseBody => {
            let want = if t == BufferType::RequestBody {
                Phase::Request
            } else {
                Phase::Response
            };
            let ctx = s.http_ctx().ok_or(Status::NotFound)?;
            if ctx.phase != want {
                return Err(Status::NotFound);
            }
            ctx.body.as_mut().ok_or(Status::NotFound)
        }
        BufferType::HttpCallResponseBody => match &mut s.callback {
            CallbackData::Http(r) => Ok(&mut r.body),
            _ => Err(Status::NotFound),
        },
        BufferType::GrpcReceiveBuffer => match &mut s.callback {
            CallbackData::Grpc { message, .. } => Ok(message),
            _ => Err(Status::NotFound),
        },
        BufferType::CallData => Ok(&mut s.foreign_args),
        BufferType::DownstreamData | BufferType::UpstreamData => Err(Status::NotFound),
        BufferType::VmConfiguration | BufferType::PluginConfiguration => Err(Status::NotFound),
    }
}

/// Decodes a map a filter passed in. A malformed blob (counts or lengths that do not
/// fit) is an empty map, as in Envoy: `set_header_map_pairs` then clears the map and
/// answers Ok. Odd, but it is what filters written against Envoy observe.
fn decode_map(bytes: &[u8]) -> Result<HeaderMap, Status> {
    Ok(abi::decode_pairs(bytes)
        .unwrap_or_default()
        .into_iter()
        .collect())
}

/// Decodes a map a filter passed in (as [`decode_map`] does) when it fits in `limit`
/// bytes as [`HeaderMap::held_bytes`] counts them; else its size, and nothing is
/// copied. A blob is at most 4 bytes longer than that count (each pair takes 10 bytes
/// of sizes and NULs, less than [`ENTRY_BYTES`]), so a longer one is refused unread.
fn decode_within(bytes: &[u8], limit: usize) -> Result<HeaderMap, usize> {
    const _: () = assert!(ENTRY_BYTES >= 10);
    if bytes.len().saturating_sub(4) > limit {
        return Err(bytes.len() - 4);
    }
    let pairs = abi::decode_pairs(bytes).unwrap_or_default();
    let size: usize = pairs
        .iter()
        .map(|(k, v)| k.len() + v.len() + ENTRY_BYTES)
        .sum();
    if size > limit {
        return Err(size);
    }
    Ok(pairs.into_iter().collect())
}

macro_rules! wrap {
    ($linker:ident, $names:ident, $name:literal, |$c:ident $(, $a:ident : $t:ty)*| $body:block) => {
        $names.push(("env", $name));
        $linker.func_wrap("env", $name, |mut $c: C<'_> $(, $a: $t)*| -> wasmtime::Result<u32> {
            #[allow(unused_mut)]
            let mut f = || -> R<()> { $body };
            let r = f();
            let _ = &mut $c;
            finish(r)
        })?;
    };
}

/// Defines every proxy-wasm and WASI host function on `linker`; returns their names.
pub fn define(
    linker: &mut Linker<HostState>,
) -> wasmtime::Result<Vec<(&'static str, &'static str)>> {
    let mut names = Vec::new();
    define_proxy(linker, &mut names)?;
    define_wasi(linker, &mut names)?;
    Ok(names)
}

/// Defines what a module imports that `define` did not: an unknown `env.proxy_*`
/// function answers `Unimplemented`, so a module built for a newer ABI still links;
/// any other unknown import is an error naming it, since Envoy refuses it too.
pub fn define_unknown(
    linker: &mut Linker<HostState>,
    module: &Module,
    known: &[(&'static str, &'static str)],
) -> wasmtime::Result<()> {
    let mut missing = Vec::new();
    for import in module.imports() {
        let (m, n) = (import.module(), import.name());
        if known.iter().any(|&(km, kn)| km == m && kn == n) {
            continue;
        }
        match import.ty() {
            wasmtime::ExternType::Func(ft) if m == "env" && n.starts_with("proxy_") => {
                let results: Vec<ValType> = ft.results().collect();
                linker.func_new(m, n, ft.clone(), move |_c, _params, out| {
                    for (slot, ty) in out.iter_mut().zip(&results) {
                        *slot = match ty {
                            ValType::I64 => Val::I64(Status::Unimplemented.code() as i64),
                            ValType::F32 => Val::F32(0),
                            ValType::F64 => Val::F64(0),
                            _ => Val::I32(Status::Unimplemented.code() as i32),
                        };
                    }
                    Ok(())
                })?;
            }
            _ => missing.push(format!("{m}.{n}")),
        }
    }
    if !missing.is_empty() {
        wasmtime::bail!(
            "the module imports what no proxy-wasm host provides (Envoy refuses it too): {}",
            missing.join(", ")
        );
    }
    Ok(())
}

fn define_proxy(
    l: &mut Linker<HostState>,
    names: &mut Vec<(&'static str, &'static str)>,
) -> wasmtime::Result<()> {
    wrap!(
        l,
        names,
        "proxy_log",
        |c, level: u32, ptr: u32, len: u32| {
            check_ranges(&c, &[(ptr, len)])?;
            let level = LogLevel::from_abi(level).ok_or(Status::BadArgument)?;
            // Only what the line may hold is copied.
            let max = c.data().env.limits.log_bytes;
            let msg = read(&c, ptr, len.min(u32::try_from(max).unwrap_or(u32::MAX)))?;
            let line = log_line(c.data(), &msg, len as usize);
            c.data_mut().log(level, line);
            Ok(())
        }
    );
    wrap!(l, names, "proxy_get_log_level", |c, ret: u32| {
        let level = c.data().env.log_level as u32;
        write_u32(&mut c, ret, level)?;
        Ok(())
    });
    wrap!(
        l,
        names,
        "proxy_get_current_time_nanoseconds",
        |c, ret: u32| {
            let now = c.data().env.clock.realtime_ns();
            write_u64(&mut c, ret, now)?;
            Ok(())
        }
    );
    wrap!(
        l,
        names,
        "proxy_set_tick_period_milliseconds",
        |c, period: u32| {
            let s = c.data_mut();
            let root = s.root_context_id as usize;
            s.tick_periods[root - 1] = period;
            Ok(())
        }
    );
    wrap!(l, names, "proxy_set_effective_context", |c, id: u32| {
        let s = c.data_mut();
        if !s.is_root(id) && !s.http.contains_key(id) {
            return Err(Status::BadArgument.into());
        }
        s.enter(id);
        Ok(())
    });
    // `proxy_done` (no root context here ever defers its end) and
    // `proxy_clear_route_cache` (routes are chosen before the filters run) answer Ok.
    for name in ["proxy_done", "proxy_clear_route_cache"] {
        names.push(("env", name));
        l.func_wrap("env", name, || Status::Ok.code())?;
    }
    wrap!(
        l,
        names,
        "proxy_call_foreign_function",
        |c, np: u32, nl: u32, ap: u32, al: u32, rp: u32, rl: u32| {
            // Envoy's foreign functions (compress, declare_property, ...) are Envoy
            // internals; none is offered here, which the SDK reports as NotFound.
            // The arguments are checked, not copied.
            let _ = (check_ranges(&c, &[(np, nl), (ap, al)])?, rp, rl);
            Err(Status::NotFound.into())
        }
    );
    wrap!(
        l,
        names,
        "proxy_get_buffer_bytes",
        |c, t: u32, start: u32, max: u32, rp: u32, rl: u32| {
            let t = BufferType::from_abi(t).ok_or(Status::BadArgument)?;
            let slice = {
                let s = c.data_mut();
                let whole: &[u8] = match t {
                    BufferType::VmConfiguration => &s.env.vm_configuration,
                    BufferType::PluginConfiguration => &s.env.configuration,
                    _ => buffer(s, t)?,
                };
                // A start past the end is an empty read, as in Envoy (the SDK panics on
                // the `BadArgument` the spec's wording suggests).
                let start = (start as usize).min(whole.len());
                let end = start.saturating_add(max as usize).min(whole.len());
                whole[start..end].to_vec()
            };
            give_some(&mut c, &slice, rp, rl)
        }
    );
    wrap!(
        l,
        names,
        "proxy_get_buffer_status",
        |c, t: u32, len_ptr: u32, flags_ptr: u32| {
            let t = BufferType::from_abi(t).ok_or(Status::BadArgument)?;
            let len = {
                let s = c.data_mut();
                match t {
                    BufferType::VmConfiguration => s.env.vm_configuration.len(),
                    BufferType::PluginConfiguration => s.env.configuration.len(),
                    _ => buffer(s, t)?.len(),
                }
            };
            write_u32(&mut c, len_ptr, len as u32)?;
            write_u32(&mut c, flags_ptr, 0)?;
            Ok(())
        }
    );
    wrap!(
        l,
        names,
        "proxy_set_buffer_bytes",
        |c, t: u32, start: u32, size: u32, dp: u32, dl: u32| {
            let t = BufferType::from_abi(t).ok_or(Status::BadArgument)?;
            // The new bytes are read in place: a body past its limit costs no copy.
            let (data, s) = guest(&mut c)?;
            let new = at(data, (dp, dl))?;
            let limit = match t {
                BufferType::RequestBody | BufferType::ResponseBody => {
                    s.http_ctx().and_then(|x| x.body_limit)
                }
                _ => None,
            }
            .unwrap_or(s.env.limits.body_bytes);
            let buf = buffer(s, t)?;
            // Envoy's semantics: start 0 and size 0 prepends; start 0 and size covering
            // the buffer replaces it; start at or past the end appends.
            let (start, size) = (start as usize, size as usize);
            let (replace, at, len) = if start == 0 && size == 0 {
                (false, 0, buf.len() + new.len())
            } else if start == 0 && size >= buf.len() {
                (true, 0, new.len())
            } else if start >= buf.len() {
                (false, buf.len(), buf.len() + new.len())
            } else {
                return Err(Status::BadArgument.into());
            };
            // A body may always shrink; it may not grow past its limit.
            let had = buf.len();
            if len > limit && len > had {
                return Err(refuse(s, Limit::BodyBytes, Status::InternalFailure, || {
                    format!("set_buffer_bytes making a body of {had} bytes {len} bytes refused")
                }));
            }
            let buf = buffer(s, t)?;
            if replace {
                buf.clear();
            }
            buf.splice(at..at, new.iter().copied());
            Ok(())
        }
    );
    wrap!(
        l,
        names,
        "proxy_get_header_map_pairs",
        |c, t: u32, rp: u32, rl: u32| {
            let t = map_type(t)?;
            if request_map_gone(c.data_mut(), t) {
                // Envoy answers the request's map, once the response has begun, with
                // no pairs (a null pointer and size 0), where a lookup of one value
                // is `BadArgument` (envoy/tests/parity.rs, request-headers-in-response).
                write_u32(&mut c, rp, 0)?;
                write_u32(&mut c, rl, 0)?;
                return Ok(());
            }
            let bytes = {
                let m = map_mut(c.data_mut(), t)?;
                abi::encode_pairs(m.iter_bytes())
            };
            give(&mut c, &bytes, rp, rl)
        }
    );
    wrap!(
        l,
        names,
        "proxy_set_header_map_pairs",
        |c, t: u32, ptr: u32, len: u32| {
            let t = map_type(t)?;
            let limit = c.data().env.limits.header_bytes;
            // Decoded straight from guest memory into the new map: no copy of the blob.
            // A map past the limit is refused before anything is copied.
            let fitted = with_map(&mut c, t, (ptr, len), (0, 0), |m, blob, _| {
                Ok(decode_within(blob, limit).map(|new| {
                    *m = new;
                    m.mark_changed();
                }))
            })?;
            fitted.map_err(|size| {
                refuse(
                    c.data(),
                    Limit::HeaderBytes,
                    Status::InternalFailure,
                    || format!("set_header_map_pairs with {size} bytes refused"),
                )
            })
        }
    );
    wrap!(
        l,
        names,
        "proxy_get_header_map_value",
        |c, t: u32, kp: u32, kl: u32, rp: u32, rl: u32| {
            let t = map_type(t)?;
            let value = with_map(&mut c, t, (kp, kl), (0, 0), |m, k, _| {
                let k = key_str(k)?;
                m.get(k).map(<[u8]>::to_vec).ok_or(Status::NotFound)
            })?;
            give(&mut c, &value, rp, rl)
        }
    );
    // Adding and replacing differ only in the edit.
    for (name, replace) in [
        ("proxy_add_header_map_value", false),
        ("proxy_replace_header_map_value", true),
    ] {
        names.push(("env", name));
        l.func_wrap(
            "env",
            name,
            move |mut c: C<'_>, t: u32, kp: u32, kl: u32, vp: u32, vl: u32| {
                finish(grow_map(&mut c, t, (kp, kl), (vp, vl), name, replace))
            },
        )?;
    }
    wrap!(
        l,
        names,
        "proxy_remove_header_map_value",
        |c, t: u32, kp: u32, kl: u32| {
            let t = map_type(t)?;
            with_map(&mut c, t, (kp, kl), (0, 0), |m, k, _| {
                m.remove(key_str(k)?);
                Ok(())
            })?;
            Ok(())
        }
    );
    wrap!(
        l,
        names,
        "proxy_get_header_map_size",
        |c, t: u32, rp: u32| {
            let t = map_type(t)?;
            let size = map_mut(c.data_mut(), t)?.byte_size();
            write_u32(&mut c, rp, size as u32)?;
            Ok(())
        }
    );
    wrap!(
        l,
        names,
        "proxy_get_property",
        |c, pp: u32, pl: u32, rp: u32, rl: u32| {
            // The path is read in place from guest memory.
            let value = {
                let (data, state) = guest(&mut c)?;
                crate::properties::get(state, at(data, (pp, pl))?).ok_or(Status::NotFound)?
            };
            give(&mut c, &value, rp, rl)
        }
    );
    wrap!(
        l,
        names,
        "proxy_set_property",
        |c, pp: u32, pl: u32, vp: u32, vl: u32| {
            // Read in place, and copied only once they fit.
            let (data, s) = guest(&mut c)?;
            let path = at(data, (pp, pl))?;
            let value = at(data, (vp, vl))?;
            if path.len() > s.env.limits.key_bytes {
                return Err(refuse(s, Limit::KeyBytes, Status::InternalFailure, || {
                    format!("set_property with a path of {pl} bytes refused")
                }));
            }
            let max = s.env.limits.property_bytes;
            let effective = s.effective;
            // Properties belong to a request: a root context has none to set (Envoy
            // answers `NotFound` there too).
            let set = match s.http.get_mut(effective) {
                Some(ctx) => ctx.properties.lock().set(path, value, max),
                None => return Err(Status::NotFound.into()),
            };
            set.map_err(|limit| {
                refuse(s, limit, Status::InternalFailure, || {
                    format!(
                        "set_property of {} bytes refused",
                        pl as usize + vl as usize
                    )
                })
            })
        }
    );
    wrap!(
        l,
        names,
        "proxy_get_shared_data",
        |c, kp: u32, kl: u32, rp: u32, rl: u32, rcas: u32| {
            let (value, cas) = {
                // The key is looked up in place.
                let (data, s) = guest(&mut c)?;
                let key = at(data, (kp, kl))?;
                s.env.shared_data.get(&s.env.vm_id, key)?
            };
            give(&mut c, &value, rp, rl)?;
            write_u32(&mut c, rcas, cas)?;
            Ok(())
        }
    );
    wrap!(
        l,
        names,
        "proxy_set_shared_data",
        |c, kp: u32, kl: u32, vp: u32, vl: u32, cas: u32| {
            // Key and value are read in place: a write past a limit is refused before
            // anything is copied.
            let (data, s) = guest(&mut c)?;
            let key = at(data, (kp, kl))?;
            let value = at(data, (vp, vl))?;
            let env = &s.env;
            env.shared_data
                .set(&env.vm_id, key, value, cas, &env.limits)
                .map_err(|r| {
                    // CasMismatch: the only refusal the ABI names for this call, and one
                    // the Rust SDK returns as an error instead of panicking.
                    refusal(s, r, Status::CasMismatch, || {
                        format!("set_shared_data of a {kl}-byte key and a {vl}-byte value refused")
                    })
                })
        }
    );
    wrap!(
        l,
        names,
        "proxy_register_shared_queue",
        |c, np: u32, nl: u32, rt: u32| {
            let name = read_name(&c, (np, nl), Limit::KeyBytes, "register_shared_queue")?;
            let token = {
                let s = c.data();
                let owner = QueueOwner {
                    root_context_id: s.root_context_id,
                    notify: s.queue_tx.clone(),
                };
                s.env
                    .queues
                    .register(&s.env.vm_id, &name, owner, &s.env.limits)
                    .map_err(|limit| {
                        refuse(s, limit, Status::InternalFailure, || {
                            "register_shared_queue of a new queue refused".to_owned()
                        })
                    })?
            };
            write_u32(&mut c, rt, token)?;
            Ok(())
        }
    );
    wrap!(
        l,
        names,
        "proxy_resolve_shared_queue",
        |c, vp: u32, vl: u32, np: u32, nl: u32, rt: u32| {
            // No queue has a name (or vm_id) longer than a key may be.
            check_ranges(&c, &[(vp, vl), (np, nl)])?;
            if vl.max(nl) as usize > c.data().env.limits.key_bytes {
                return Err(Status::NotFound.into());
            }
            let (vm_id, name) = (read_str(&c, vp, vl)?, read_str(&c, np, nl)?);
            let env = &c.data().env;
            // An empty vm_id is the caller's own, as in Envoy.
            let vm_id = if vm_id.is_empty() { &env.vm_id } else { &vm_id };
            let token = env.queues.resolve(vm_id, &name).ok_or(Status::NotFound)?;
            write_u32(&mut c, rt, token)?;
            Ok(())
        }
    );
    wrap!(
        l,
        names,
        "proxy_dequeue_shared_queue",
        |c, token: u32, rp: u32, rl: u32| {
            let item = c.data().env.queues.dequeue(token)?;
            give(&mut c, &item, rp, rl)
        }
    );
    wrap!(
        l,
        names,
        "proxy_enqueue_shared_queue",
        |c, token: u32, vp: u32, vl: u32| {
            let (data, s) = guest(&mut c)?;
            let value = at(data, (vp, vl))?;
            match s.env.queues.enqueue(token, value, &s.env.limits) {
                Ok(Enqueued::Added) => Ok(()),
                Ok(Enqueued::DroppedOldest) => {
                    s.env.refused(Limit::QueueItems, || {
                        "enqueue_shared_queue to a full queue: its oldest item dropped".to_owned()
                    });
                    Ok(())
                }
                Err(r) => Err(refusal(s, r, Status::InternalFailure, || {
                    format!("enqueue_shared_queue of {vl} bytes refused")
                })),
            }
        }
    );
    wrap!(l, names, "proxy_continue_stream", |c, t: u32| {
        resume(c.data_mut(), StreamType::from_abi(t))
    });
    wrap!(l, names, "proxy_continue_request", |c| {
        resume(c.data_mut(), Some(StreamType::Request))
    });
    wrap!(l, names, "proxy_continue_response", |c| {
        resume(c.data_mut(), Some(StreamType::Response))
    });
    wrap!(l, names, "proxy_close_stream", |c, t: u32| {
        StreamType::from_abi(t).ok_or(Status::BadArgument)?;
        let ctx = c.data_mut().http_ctx().ok_or(Status::NotFound)?;
        ctx.close = true;
        ctx.signal.notify_one();
        Ok(())
    });
    wrap!(
        l,
        names,
        "proxy_send_local_response",
        |c, status: u32, dp: u32, dl: u32, bp: u32, bl: u32, hp: u32, hl: u32, grpc: i32| {
            // Read in place: a reply past the limits is refused before anything is
            // copied. The details only reach the log, so they are cut as a log line is.
            let (data, s) = guest(&mut c)?;
            let limits = &s.env.limits;
            let details = at(data, (dp, dl))?;
            let body = at(data, (bp, bl))?;
            if body.len() > limits.body_bytes {
                return Err(refuse(s, Limit::BodyBytes, Status::InternalFailure, || {
                    format!("send_local_response with a body of {bl} bytes refused")
                }));
            }
            let headers =
                decode_within(at(data, (hp, hl))?, limits.header_bytes).map_err(|size| {
                    refuse(s, Limit::HeaderBytes, Status::InternalFailure, || {
                        format!("send_local_response with headers of {size} bytes refused")
                    })
                })?;
            let details = &details[..details.len().min(limits.log_bytes)];
            let (details, body) = (String::from_utf8_lossy(details).into_owned(), body.to_vec());
            let status = u16::try_from(status)
                .ok()
                .filter(|s| (100..=599).contains(s))
                .ok_or(Status::BadArgument)?;
            let ctx = s.http_ctx().ok_or(Status::NotFound)?;
            ctx.local_reply = Some(LocalReply {
                status,
                details,
                body,
                headers,
                grpc_status: grpc,
            });
            ctx.signal.notify_one();
            Ok(())
        }
    );
    wrap!(
        l,
        names,
        "proxy_http_call",
        |c,
         up: u32,
         ul: u32,
         hp: u32,
         hl: u32,
         bp: u32,
         bl: u32,
         tp: u32,
         tl: u32,
         timeout: u32,
         rt: u32| {
            let total = check_ranges(&c, &[(up, ul), (hp, hl), (bp, bl), (tp, tl)])?;
            if total > c.data().env.limits.call_bytes {
                return Err(refuse(
                    c.data(),
                    Limit::CallBytes,
                    Status::InternalFailure,
                    || format!("http_call of {total} bytes refused"),
                ));
            }
            let cluster = read_str(&c, up, ul)?;
            let headers = decode_map(&read(&c, hp, hl)?)?;
            let body = read(&c, bp, bl)?;
            let trailers = decode_map(&read(&c, tp, tl)?)?;
            // Check the return slot before anything is queued.
            write_u32(&mut c, rt, 0)?;
            if [":method", ":path", ":authority"]
                .iter()
                .any(|h| headers.get(h).is_none_or(<[u8]>::is_empty))
            {
                return Err(Status::BadArgument.into());
            }
            if !(c.data().env.has_cluster)(&cluster) {
                return Err(Status::BadArgument.into());
            }
            let s = c.data_mut();
            admit_call(s, "http_call")?;
            s.next_token = s.next_token.wrapping_add(1).max(1);
            let token = s.next_token;
            let request = HttpCallRequest {
                headers,
                body,
                trailers,
                timeout: Duration::from_millis(timeout as u64),
            };
            s.outgoing.push(Outgoing {
                token,
                context_id: s.effective,
                root: s.root_context_id,
                cluster,
                request: OutgoingRequest::Http(request),
            });
            write_u32(&mut c, rt, token)?;
            Ok(())
        }
    );
    wrap!(
        l,
        names,
        "proxy_grpc_call",
        |c,
         up: u32,
         ul: u32,
         sp: u32,
         sl: u32,
         mp: u32,
         ml: u32,
         ip: u32,
         il: u32,
         msgp: u32,
         msgl: u32,
         timeout: u32,
         rt: u32| {
            let total = check_ranges(&c, &[(up, ul), (sp, sl), (mp, ml), (ip, il), (msgp, msgl)])?;
            if total > c.data().env.limits.call_bytes {
                return Err(refuse(
                    c.data(),
                    Limit::CallBytes,
                    Status::InternalFailure,
                    || format!("grpc_call of {total} bytes refused"),
                ));
            }
            let cluster = read_str(&c, up, ul)?;
            let service = read_str(&c, sp, sl)?;
            let method = read_str(&c, mp, ml)?;
            let initial_metadata = decode_map(&read(&c, ip, il)?)?;
            let message = read(&c, msgp, msgl)?;
            write_u32(&mut c, rt, 0)?;
            // The SDK expects ParseFailure for a service it cannot use.
            if !(c.data().env.has_cluster)(&cluster) {
                return Err(Status::ParseFailure.into());
            }
            let s = c.data_mut();
            admit_call(s, "grpc_call")?;
            s.next_token = s.next_token.wrapping_add(1).max(1);
            let token = s.next_token;
            s.grpc_in_flight.insert(token);
            let request = GrpcCallRequest {
                service,
                method,
                initial_metadata,
                message,
                timeout: Duration::from_millis(timeout as u64),
            };
            s.outgoing.push(Outgoing {
                token,
                context_id: s.effective,
                root: s.root_context_id,
                cluster,
                request: OutgoingRequest::Grpc(request),
            });
            write_u32(&mut c, rt, token)?;
            Ok(())
        }
    );
    // Streaming gRPC is not offered (nothing in Portcullis needs it).
    wrap!(
        l,
        names,
        "proxy_grpc_stream",
        |c, _a: u32, _b: u32, _d: u32, _e: u32, _f: u32, _g: u32, _h: u32, _i: u32, _j: u32| {
            let _ = &c;
            Err(Status::Unimplemented.into())
        }
    );
    wrap!(
        l,
        names,
        "proxy_grpc_send",
        |c, _t: u32, _p: u32, _l: u32, _e: u32| {
            // No streams are ever opened, so no token is a stream's: `NotFound`, what
            // Envoy answers for such a token (parity case `abi-edges`).
            let _ = &c;
            Err(Status::NotFound.into())
        }
    );
    wrap!(l, names, "proxy_grpc_cancel", |c, token: u32| {
        cancel_call(c.data_mut(), token)
    });
    wrap!(l, names, "proxy_grpc_close", |c, token: u32| {
        cancel_call(c.data_mut(), token)
    });
    wrap!(
        l,
        names,
        "proxy_get_status",
        |c, rc: u32, rp: u32, rl: u32| {
            let (code, message) = c.data().grpc_status.clone();
            write_u32(&mut c, rc, code)?;
            give_some(&mut c, &message, rp, rl)
        }
    );
    wrap!(
        l,
        names,
        "proxy_define_metric",
        |c, t: u32, np: u32, nl: u32, rid: u32| {
            let kind = MetricKind::from_abi(t).ok_or(Status::BadArgument)?;
            let name = read_name(&c, (np, nl), Limit::MetricNameBytes, "define_metric")?;
            let metric = {
                let s = c.data();
                let env = &s.env;
                env.metrics
                    .define_by(kind, &name, &env.vm_id, env.limits.metrics)
                    .map_err(|r| {
                        refusal(s, r, Status::InternalFailure, || {
                            "define_metric of a new name refused".to_owned()
                        })
                    })?
            };
            // Envoy hands out a new id for every definition, even of the same name; each
            // id reaches the one metric of that name.
            let s = c.data_mut();
            let known = (s.metric_ids.len() >= METRIC_IDS_PER_VM)
                .then(|| s.metric_ids.iter().position(|m| Arc::ptr_eq(m, &metric)))
                .flatten();
            let id = match known {
                Some(i) => i as u32,
                None => {
                    s.metric_ids.push(metric);
                    s.metric_ids.len() as u32 - 1
                }
            };
            write_u32(&mut c, rid, id)?;
            Ok(())
        }
    );
    wrap!(
        l,
        names,
        "proxy_increment_metric",
        |c, id: u32, offset: i64| {
            let m = c
                .data()
                .metric_ids
                .get(id as usize)
                .ok_or(Status::NotFound)?;
            m.increment(offset)?;
            Ok(())
        }
    );
    wrap!(l, names, "proxy_record_metric", |c, id: u32, value: u64| {
        let m = c
            .data()
            .metric_ids
            .get(id as usize)
            .ok_or(Status::NotFound)?;
        m.record(value);
        Ok(())
    });
    wrap!(l, names, "proxy_get_metric", |c, id: u32, rp: u32| {
        let v = c
            .data()
            .metric_ids
            .get(id as usize)
            .ok_or(Status::NotFound)?
            .get()?;
        write_u64(&mut c, rp, v)?;
        Ok(())
    });
    Ok(())
}

fn resume(s: &mut HostState, t: Option<StreamType>) -> R<()> {
    // No stream to resume (a root context): nothing to do, `Ok` as in Envoy.
    let Some(ctx) = s.http_ctx() else {
        return Ok(());
    };
    match t {
        Some(StreamType::Request) => ctx.resume_request = true,
        Some(StreamType::Response) => ctx.resume_response = true,
        // As Envoy: the downstream connection has nothing to resume, and the upstream
        // one cannot be resumed from a filter.
        Some(StreamType::Downstream) => return Ok(()),
        Some(StreamType::Upstream) => return Err(Status::Unimplemented.into()),
        None => return Err(Status::BadArgument.into()),
    }
    ctx.signal.notify_one();
    Ok(())
}

/// Counts a new call in flight, or refuses it past the request's or the VM's limit
/// (`InternalFailure`: the ABI's "the host failed to send the call", which the Rust SDK
/// returns as an error).
fn admit_call(s: &mut HostState, call: &'static str) -> R<()> {
    let effective = s.effective;
    let (per_request, per_vm) = (s.env.limits.calls_per_request, s.env.limits.calls_per_vm);
    if s.http
        .get(effective)
        .is_some_and(|x| x.pending_calls >= per_request)
    {
        return Err(refuse(
            s,
            Limit::CallsPerRequest,
            Status::InternalFailure,
            || format!("{call} refused"),
        ));
    }
    if s.pending_calls >= per_vm {
        return Err(refuse(
            s,
            Limit::CallsPerVm,
            Status::InternalFailure,
            || format!("{call} refused"),
        ));
    }
    s.pending_calls += 1;
    if let Some(ctx) = s.http.get_mut(effective) {
        ctx.pending_calls += 1;
    }
    Ok(())
}

fn cancel_call(s: &mut HostState, token: u32) -> R<()> {
    // Only calls in flight can be cancelled: the set of cancelled tokens stays as small
    // as the calls are few.
    if !s.grpc_in_flight.contains(&token) || s.cancelled_grpc.contains(&token) {
        return Err(Status::NotFound.into());
    }
    let queued = s
        .outgoing
        .iter()
        .position(|o| o.token == token && matches!(o.request, OutgoingRequest::Grpc(_)));
    match queued {
        Some(i) => {
            let call = s.outgoing.remove(i);
            s.grpc_in_flight.remove(&token);
            s.call_done(call.context_id);
        }
        // A call already on its way is cancelled by dropping its answer.
        None => {
            s.cancelled_grpc.insert(token);
        }
    }
    Ok(())
}

// WASI preview1 errno values.
const ERRNO_SUCCESS: u32 = 0;
const ERRNO_BADF: u32 = 8;
const ERRNO_INVAL: u32 = 28;
const ERRNO_NOSYS: u32 = 52;
const ERRNO_SPIPE: u32 = 70;
const ERRNO_FAULT: u32 = 21;

fn errno(r: Result<(), Status>) -> u32 {
    match r {
        Ok(()) => ERRNO_SUCCESS,
        Err(_) => ERRNO_FAULT,
    }
}

/// WASI's module names: preview1, and `wasi_unstable` (preview0), which older
/// toolchains (AssemblyScript's proxy-wasm SDK) import and Envoy serves with the same
/// functions. Where the two differ (`fd_seek`'s whence) our answer does not depend on
/// it.
const WASI_MODULES: [&str; 2] = ["wasi_snapshot_preview1", "wasi_unstable"];

fn define_wasi(
    l: &mut Linker<HostState>,
    names: &mut Vec<(&'static str, &'static str)>,
) -> wasmtime::Result<()> {
    for module in WASI_MODULES {
        names.extend(WASI_NAMES.iter().map(|n| (module, *n)));
        define_wasi_module(l, module)?;
    }
    Ok(())
}

fn define_wasi_module(l: &mut Linker<HostState>, wasi: &'static str) -> wasmtime::Result<()> {
    l.func_wrap(
        wasi,
        "fd_write",
        |mut c: C<'_>, fd: u32, iovs: u32, n: u32, nwritten: u32| -> u32 {
            let r = (|| -> Result<u32, Status> {
                if fd != 1 && fd != 2 {
                    return Err(Status::BadArgument);
                }
                let table = read(&c, iovs, n.checked_mul(8).ok_or(IMA)?)?;
                // Iovecs may point at the same bytes again and again: the line is
                // assembled only up to what it may hold, and the rest only counted.
                let max = c.data().env.limits.log_bytes;
                let mut text = Vec::new();
                let mut total = 0usize;
                for iov in table.chunks_exact(8) {
                    let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                    let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                    check_ranges(&c, &[(ptr, len)])?;
                    total = total.saturating_add(len as usize);
                    let room = max.saturating_sub(text.len());
                    if room > 0 {
                        text.extend(read(&c, ptr, len.min(room as u32))?);
                    }
                }
                let written = u32::try_from(total).unwrap_or(u32::MAX);
                // Envoy: stdout goes to the info log, stderr to the error log.
                let level = if fd == 1 {
                    LogLevel::Info
                } else {
                    LogLevel::Error
                };
                let msg = log_line(c.data(), &text, total);
                let msg = msg.strip_suffix('\n').unwrap_or(&msg);
                if !msg.is_empty() {
                    c.data_mut().log(level, msg.to_owned());
                }
                write_u32(&mut c, nwritten, written)?;
                Ok(written)
            })();
            match r {
                Ok(_) => ERRNO_SUCCESS,
                Err(Status::BadArgument) => ERRNO_BADF,
                Err(_) => ERRNO_FAULT,
            }
        },
    )?;
    l.func_wrap(
        wasi,
        "fd_read",
        |_c: C<'_>, _fd: u32, _iovs: u32, _n: u32, _nread: u32| -> u32 { ERRNO_BADF },
    )?;
    l.func_wrap(
        wasi,
        "fd_seek",
        |_c: C<'_>, _fd: u32, _off: i64, _whence: u32, _ret: u32| -> u32 { ERRNO_SPIPE },
    )?;
    l.func_wrap(wasi, "fd_close", |_c: C<'_>, _fd: u32| -> u32 {
        ERRNO_SUCCESS
    })?;
    l.func_wrap(
        wasi,
        "fd_fdstat_get",
        |mut c: C<'_>, fd: u32, buf: u32| -> u32 {
            if fd > 2 {
                return ERRNO_BADF;
            }
            // filetype character device (2), no flags, no rights: a log stream.
            let mut stat = [0u8; 24];
            stat[0] = 2;
            errno(write(&mut c, buf, &stat))
        },
    )?;
    l.func_wrap(
        wasi,
        "fd_fdstat_set_flags",
        |_c: C<'_>, _fd: u32, _flags: u32| -> u32 { ERRNO_NOSYS },
    )?;
    l.func_wrap(
        wasi,
        "fd_prestat_get",
        |_c: C<'_>, _fd: u32, _buf: u32| -> u32 { ERRNO_BADF },
    )?;
    l.func_wrap(
        wasi,
        "fd_prestat_dir_name",
        |_c: C<'_>, _fd: u32, _p: u32, _l: u32| -> u32 { ERRNO_BADF },
    )?;
    for (get, sizes) in [
        ("environ_get", "environ_sizes_get"),
        ("args_get", "args_sizes_get"),
    ] {
        l.func_wrap(wasi, get, |_c: C<'_>, _a: u32, _b: u32| -> u32 {
            ERRNO_SUCCESS
        })?;
        l.func_wrap(wasi, sizes, |mut c: C<'_>, count: u32, size: u32| -> u32 {
            errno(write_u32(&mut c, count, 0).and_then(|()| write_u32(&mut c, size, 0)))
        })?;
    }
    l.func_wrap(
        wasi,
        "clock_time_get",
        |mut c: C<'_>, id: u32, _precision: u64, ret: u32| -> u32 {
            let clock = &c.data().env.clock;
            let now = match id {
                0 => clock.realtime_ns(),
                1 => clock.monotonic_ns(),
                _ => return ERRNO_INVAL,
            };
            errno(write_u64(&mut c, ret, now))
        },
    )?;
    l.func_wrap(
        wasi,
        "random_get",
        |mut c: C<'_>, buf: u32, len: u32| -> u32 {
            // Envoy serves at most 64 KiB a call.
            if len > 64 * 1024 {
                return ERRNO_INVAL;
            }
            let mut bytes = vec![0u8; len as usize];
            if getrandom::fill(&mut bytes).is_err() {
                return ERRNO_NOSYS;
            }
            errno(write(&mut c, buf, &bytes))
        },
    )?;
    l.func_wrap(wasi, "sched_yield", |_c: C<'_>| -> u32 { ERRNO_SUCCESS })?;
    l.func_wrap(
        wasi,
        "poll_oneoff",
        |_c: C<'_>, _i: u32, _o: u32, _n: u32, _r: u32| -> u32 { ERRNO_NOSYS },
    )?;
    l.func_wrap(
        wasi,
        "proc_exit",
        |_c: C<'_>, code: u32| -> wasmtime::Result<()> {
            wasmtime::bail!("the filter called proc_exit({code})")
        },
    )?;
    Ok(())
}

const WASI_NAMES: [&str; 17] = [
    "fd_write",
    "fd_read",
    "fd_seek",
    "fd_close",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "environ_get",
    "environ_sizes_get",
    "args_get",
    "args_sizes_get",
    "clock_time_get",
    "random_get",
    "sched_yield",
    "poll_oneoff",
    "proc_exit",
];
