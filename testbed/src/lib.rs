//! The test bed: load built `.wasm` filters into the real host engine, script or
//! connect the clusters they call, drive a virtual clock, send requests, and look at
//! what the upstream received, what the client got, the logs, metrics and shared data.
//!
//! ```no_run
//! use portcullis_testbed::{TestBed, Request, wasm};
//! let mut bed = TestBed::new().filter(wasm("jwt_auth"), "{}").build().unwrap();
//! let res = bed.send(Request::get("/orders").header("authorization", "Bearer x"));
//! assert_eq!(res.status, 401);
//! ```

mod bed;
mod clusters;
pub mod modules;
mod ports;
pub mod redis;

pub use bed::{
    Held, Request, Response, TestBed, TestBedBuilder, UpstreamRequest, built_binary, wasm,
    wasm_dir, workspace_dir,
};
pub use clusters::Reply;
pub use portcullis_engine::{
    CallFailure, FailurePolicy, GrpcCallRequest, GrpcCallResponse, GrpcStatus, HeaderMap,
    HostLimits, HttpCallRequest, HttpCallResponse, Limit, LogRecord, VmLimits, abi::LogLevel,
    metrics::MetricValue,
};
pub use ports::free_port;
