//! Modules written by hand in WAT, for the tests and benchmarks that need a filter the
//! SDK would not produce: a broken reply, a missing export, a filter that does nothing
//! at all.

/// What most hand-written modules start with: a memory, a bump allocator that never
/// frees (enough for a test's requests), and the two callbacks every module answers
/// (a context is created; the configuration is accepted).
pub const MINIMAL_PROLOGUE: &str = r#"
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
"#;

/// A module of `fields` (WAT module fields), as bytes; panics on invalid WAT, which
/// is the caller's mistake.
pub fn wat_module(fields: &str) -> Vec<u8> {
    wat::parse_str(format!("(module {fields})")).expect("valid WAT")
}

/// A filter with no SDK whose every callback answers at once: continue, and true
/// where the ABI asks whether to go on (`on_vm_start`, `on_configure`, `on_done`).
/// What it costs a host is the host's own part of running a filter.
pub fn bare_noop() -> Vec<u8> {
    wat_module(&format!(
        r#"{MINIMAL_PROLOGUE}
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_request_trailers") (param i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_trailers") (param i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32))"#
    ))
}
