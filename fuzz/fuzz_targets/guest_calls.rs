//! Arbitrary guest memory and host-call arguments through the engine: each input
//! becomes a small proxy-wasm module (built here with wasm-encoder) whose memory
//! starts with the input's bytes and whose `proxy_on_request_headers` and
//! `proxy_on_response_headers` make the input's sequence of host calls (header maps,
//! buffers, properties, shared data and queues, local replies, http calls, metrics,
//! logs) with the input's pointers and lengths, some at the edges of its memory and
//! of `u32`. Its allocator answers what the input says (in bounds, null, at the
//! memory's end, far outside).
//!
//! Invariants: the host never panics or hangs whatever the guest passes; a bad pointer
//! is a status or a failed filter (a 503 from the failure policy), never a read or
//! write outside the guest's memory (AddressSanitizer watches the host's own).
#![no_main]

use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use portcullis_engine::{
    CallFailure, Clusters, Engine, EngineConfig, Filter, Flow, GrpcCallRequest,
    GrpcCallResponse, GrpcStatus, HeaderMap, HttpCallRequest, HttpCallResponse, HttpStream,
    LocalFuture, PluginSpec, RequestInfo,
};
use wasm_encoder::{
    CodeSection, ConstExpr, DataSection, EntityType, ExportKind, ExportSection, Function,
    FunctionSection, ImportSection, Instruction, MemorySection, MemoryType, Module,
    TypeSection, ValType,
};

/// The guest's memory: one 64 KiB page, so 16-bit pointers reach all of it and past.
const PAGE: u32 = 65536;

/// Host functions the guest may call: name and number of `u32` parameters.
const CALLS: [(&str, u32); 34] = [
    ("proxy_log", 3),
    ("proxy_get_log_level", 1),
    ("proxy_get_current_time_nanoseconds", 1),
    ("proxy_set_tick_period_milliseconds", 1),
    ("proxy_set_effective_context", 1),
    ("proxy_done", 0),
    ("proxy_call_foreign_function", 6),
    ("proxy_get_buffer_bytes", 5),
    ("proxy_get_buffer_status", 3),
    ("proxy_set_buffer_bytes", 5),
    ("proxy_get_header_map_pairs", 3),
    ("proxy_set_header_map_pairs", 3),
    ("proxy_get_header_map_value", 5),
    ("proxy_add_header_map_value", 5),
    ("proxy_replace_header_map_value", 5),
    ("proxy_remove_header_map_value", 3),
    ("proxy_get_header_map_size", 2),
    ("proxy_get_property", 4),
    ("proxy_set_property", 4),
    ("proxy_get_shared_data", 5),
    ("proxy_set_shared_data", 5),
    ("proxy_register_shared_queue", 3),
    ("proxy_resolve_shared_queue", 5),
    ("proxy_dequeue_shared_queue", 3),
    ("proxy_enqueue_shared_queue", 3),
    ("proxy_continue_stream", 1),
    ("proxy_close_stream", 1),
    ("proxy_clear_route_cache", 0),
    ("proxy_send_local_response", 8),
    ("proxy_http_call", 10),
    ("proxy_get_status", 3),
    ("proxy_define_metric", 4),
    ("proxy_get_metric", 2),
    ("proxy_grpc_cancel", 1),
];

/// Reads the input front to back; past its end, zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    /// A pointer, length or enum: mostly inside or just past the guest's memory, the
    /// top 16 values at the very top of `u32` (where `ptr + len` overflows).
    fn arg(&mut self) -> i32 {
        let v = u32::from(self.u8()) | (u32::from(self.u8()) << 8);
        (if v >= 0xfff0 { u32::MAX - (0xffff - v) } else { v }) as i32
    }
}

fn module(input: &mut Input<'_>) -> Vec<u8> {
    let alloc_answer: i32 = match input.u8() % 4 {
        0 => 32768,
        1 => 0,
        2 => (PAGE - 8) as i32,
        _ => -16,
    };
    let data_len = usize::from(input.u8()) * 16;
    let data: Vec<u8> = (0..data_len).map(|_| input.u8()).collect();
    // The calls: a selector byte, then its arguments.
    let mut calls: Vec<(u32, Vec<i32>)> = Vec::new();
    while !input.0.is_empty() && calls.len() < 64 {
        let f = u32::from(input.u8()) % CALLS.len() as u32;
        let args = (0..CALLS[f as usize].1).map(|_| input.arg()).collect();
        calls.push((f, args));
    }

    let mut types = TypeSection::new();
    for n in 0..=10 {
        // Type n: n u32 parameters -> u32 (the host calls).
        types.ty().function(vec![ValType::I32; n], [ValType::I32]);
    }
    let t_void2 = 11; // (u32, u32) -> ()
    types.ty().function([ValType::I32, ValType::I32], []);
    let mut imports = ImportSection::new();
    for (name, n) in CALLS {
        imports.import("env", name, EntityType::Function(n));
    }
    let nimp = CALLS.len() as u32;
    let mut funcs = FunctionSection::new();
    let mut exports = ExportSection::new();
    let mut code = CodeSection::new();
    let mut add = |name: &[&str], ty: u32, body: &Function| {
        let idx = nimp + funcs.len();
        funcs.function(ty);
        code.function(body);
        for n in name {
            exports.export(n, ExportKind::Func, idx);
        }
    };
    let ret = |v: i32| {
        let mut f = Function::new([]);
        f.instruction(&Instruction::I32Const(v)).instruction(&Instruction::End);
        f
    };
    add(&["proxy_abi_version_0_2_1"], 0, &ret(0));
    add(&["proxy_on_memory_allocate", "malloc"], 1, &ret(alloc_answer));
    add(&["proxy_on_vm_start", "proxy_on_configure"], 2, &ret(1));
    let mut empty = Function::new([]);
    empty.instruction(&Instruction::End);
    add(&["proxy_on_context_create"], t_void2, &empty);
    let mut body = Function::new([]);
    for (f, args) in &calls {
        for a in args {
            body.instruction(&Instruction::I32Const(*a));
        }
        body.instruction(&Instruction::Call(*f));
        body.instruction(&Instruction::Drop);
    }
    // Continue: a pause would wait for a resume that never comes.
    body.instruction(&Instruction::I32Const(0)).instruction(&Instruction::End);
    add(
        &["proxy_on_request_headers", "proxy_on_response_headers"],
        3,
        &body,
    );
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: 1,
        maximum: Some(1),
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    exports.export("memory", ExportKind::Memory, 0);
    let mut datas = DataSection::new();
    datas.active(0, &ConstExpr::i32_const(0), data);

    let mut m = Module::new();
    m.section(&types)
        .section(&imports)
        .section(&funcs)
        .section(&memories)
        .section(&exports)
        .section(&code)
        .section(&datas);
    m.finish()
}

/// One cluster, `c`, that answers every call with a 200 at once.
struct OneCluster;

impl Clusters for OneCluster {
    fn has_cluster(&self, name: &str) -> bool {
        name == "c"
    }
    fn http_call(
        &self,
        _: &str,
        _: HttpCallRequest,
    ) -> LocalFuture<Result<HttpCallResponse, CallFailure>> {
        let mut headers = HeaderMap::new();
        headers.add(":status", "200");
        Box::pin(async move {
            Ok(HttpCallResponse {
                headers,
                body: b"ok".to_vec(),
                trailers: HeaderMap::new(),
            })
        })
    }
    fn grpc_call(
        &self,
        _: &str,
        _: GrpcCallRequest,
    ) -> LocalFuture<Result<GrpcCallResponse, GrpcStatus>> {
        Box::pin(async {
            Err(GrpcStatus {
                code: 14,
                message: "unavailable".into(),
            })
        })
    }
    fn names(&self) -> Arc<dyn Fn(&str) -> bool + Send + Sync> {
        Arc::new(|n| n == "c")
    }
}

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        Engine::new(EngineConfig {
            cache_dir: None,
            log: Arc::new(|_| {}),
            ..EngineConfig::default()
        })
        .expect("an engine")
    })
}

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
}

fuzz_target!(|data: &[u8]| {
    let bytes = module(&mut Input(data));
    let module = engine()
        .load(&bytes)
        .expect("the module we built is valid and links");
    RT.with(|rt| {
        let local = tokio::task::LocalSet::new();
        local.block_on(rt, async {
            let spec = PluginSpec::new("fuzz", module, b"{}".to_vec());
            let Ok(filter) = Filter::start(engine(), spec, Rc::new(OneCluster)) else {
                return;
            };
            let info = RequestInfo {
                id: "r1".into(),
                method: "GET".into(),
                path: "/x".into(),
                host: "h".into(),
                ..RequestInfo::default()
            };
            let mut stream = HttpStream::new(std::slice::from_ref(&filter), info);
            let mut req: HeaderMap = [(":method", "GET"), (":path", "/x"), ("a", "b")]
                .into_iter()
                .collect();
            let flow = stream.request_headers(&mut req, true).await;
            if matches!(flow, Flow::Continue) {
                let mut resp: HeaderMap = [(":status", "200")].into_iter().collect();
                let _ = stream.response_headers(&mut resp, true).await;
                stream.finish(&mut req, &mut resp);
            }
        });
    });
});
