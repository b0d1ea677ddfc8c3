//! Shared set-up for the benchmarks in `benches/benches/`.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use portcullis_engine::{
    CallFailure, Clusters, Engine, EngineConfig, GrpcCallRequest, GrpcCallResponse, GrpcStatus,
    HeaderMap, HttpCallRequest, HttpCallResponse, LocalFuture, RequestInfo,
};

/// A built filter, as the test bed finds it.
pub fn wasm(name: &str) -> PathBuf {
    portcullis_testbed::wasm(name)
}

/// An engine that logs nothing (benchmarks measure, they do not print).
pub fn quiet_engine() -> Engine {
    Engine::new(EngineConfig {
        log: Arc::new(|_| {}),
        ..EngineConfig::default()
    })
    .expect("engine")
}

/// No clusters: the benchmarked filters make no calls.
pub struct NoClusters;

impl Clusters for NoClusters {
    fn has_cluster(&self, _: &str) -> bool {
        false
    }
    fn names(&self) -> Arc<dyn Fn(&str) -> bool + Send + Sync> {
        Arc::new(|_| false)
    }
    fn http_call(
        &self,
        _: &str,
        _: HttpCallRequest,
    ) -> LocalFuture<Result<HttpCallResponse, CallFailure>> {
        Box::pin(async { Err(CallFailure::ConnectFailed("no clusters".into())) })
    }
    fn grpc_call(
        &self,
        _: &str,
        _: GrpcCallRequest,
    ) -> LocalFuture<Result<GrpcCallResponse, GrpcStatus>> {
        Box::pin(async {
            Err(GrpcStatus {
                code: GrpcStatus::UNAVAILABLE,
                message: "no clusters".into(),
            })
        })
    }
}

pub fn no_clusters() -> Rc<dyn Clusters> {
    Rc::new(NoClusters)
}

/// One cluster, `name`, whose every `http_call` gets `answer` (200, JSON) at once.
pub struct Answering {
    pub name: &'static str,
    pub answer: String,
}

impl Clusters for Answering {
    fn has_cluster(&self, name: &str) -> bool {
        name == self.name
    }
    fn names(&self) -> Arc<dyn Fn(&str) -> bool + Send + Sync> {
        let name = self.name;
        Arc::new(move |n| n == name)
    }
    fn http_call(
        &self,
        _: &str,
        _: HttpCallRequest,
    ) -> LocalFuture<Result<HttpCallResponse, CallFailure>> {
        let body = self.answer.clone().into_bytes();
        Box::pin(async move {
            let mut headers = HeaderMap::new();
            headers.add(":status", "200");
            headers.add("content-type", "application/json");
            Ok(HttpCallResponse {
                headers,
                body,
                trailers: HeaderMap::new(),
            })
        })
    }
    fn grpc_call(
        &self,
        cluster: &str,
        request: GrpcCallRequest,
    ) -> LocalFuture<Result<GrpcCallResponse, GrpcStatus>> {
        NoClusters.grpc_call(cluster, request)
    }
}

/// A typical browser-ish request: 10 headers.
pub fn ten_headers() -> HeaderMap {
    [
        (":method", "GET"),
        (":path", "/orders/12345?expand=items"),
        (":authority", "api.example.com"),
        (":scheme", "https"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
        ),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        (
            "authorization",
            "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln",
        ),
        ("x-request-id", "2b7e1516-28ae-d2a6-abf7-158809cf4f3c"),
        ("cookie", "session=abc123; theme=dark"),
    ]
    .into_iter()
    .collect()
}

pub fn request_info() -> RequestInfo {
    RequestInfo {
        id: "bench".into(),
        protocol: "HTTP/1.1".into(),
        scheme: "https".into(),
        ..RequestInfo::default()
    }
}

/// A small upstream response: status, a server header, a content type.
pub fn small_response() -> HeaderMap {
    [
        (":status", "200"),
        ("server", "upstream"),
        ("content-type", "application/json"),
    ]
    .into_iter()
    .collect()
}

/// Runs `iters` whole requests (context, request headers, response headers, log,
/// done, delete) through `chain` and returns the time they took; `headers` makes each
/// request's headers. Must run inside the LocalSet the chain's filters started in.
pub async fn full_requests(
    chain: &[portcullis_engine::Filter],
    iters: u64,
    headers: impl Fn() -> HeaderMap,
) -> std::time::Duration {
    use portcullis_engine::{Flow, HttpStream};
    let start = std::time::Instant::now();
    for _ in 0..iters {
        let mut h = headers();
        let mut resp = small_response();
        let mut stream = HttpStream::new(chain, request_info());
        assert_eq!(stream.request_headers(&mut h, true).await, Flow::Continue);
        assert_eq!(
            stream.response_headers(&mut resp, true).await,
            Flow::Continue
        );
        stream.finish(&mut h, &mut resp);
    }
    start.elapsed()
}

/// A quiet engine, a current-thread runtime and the LocalSet filters run in: what every
/// filter benchmark sets up.
pub struct Harness {
    pub engine: Engine,
    pub rt: tokio::runtime::Runtime,
    pub local: tokio::task::LocalSet,
}

impl Default for Harness {
    fn default() -> Self {
        Harness {
            engine: quiet_engine(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            local: tokio::task::LocalSet::new(),
        }
    }
}

impl Harness {
    /// A chain of one built filter with `config`.
    pub fn chain(&self, name: &str, config: String) -> Vec<portcullis_engine::Filter> {
        let module = self.engine.load_file(&wasm(name)).expect("filter loads");
        let _g = self.local.enter();
        let _r = self.rt.enter();
        vec![
            portcullis_engine::Filter::start(
                &self.engine,
                portcullis_engine::PluginSpec::new(name, module, config),
                no_clusters(),
            )
            .expect("filter starts"),
        ]
    }

    /// Time of `iters` whole requests through `chain`.
    pub fn full_requests(
        &self,
        chain: &[portcullis_engine::Filter],
        iters: u64,
        headers: impl Fn() -> HeaderMap,
    ) -> std::time::Duration {
        self.rt
            .block_on(self.local.run_until(full_requests(chain, iters, headers)))
    }
}
