//! The clusters a filter under test can call: scripted replies, or a real loopback
//! service.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use portcullis_clients::HttpCluster;
use portcullis_engine::{
    CallFailure, Clusters, GrpcCallRequest, GrpcCallResponse, GrpcStatus, HeaderMap,
    HttpCallRequest, HttpCallResponse, LocalFuture,
};

/// What a scripted cluster answers.
#[derive(Clone, Debug)]
pub enum Reply {
    Http(HttpCallResponse),
    Fail(CallFailure),
    /// Never answers: the call runs into its timeout (504).
    Never,
}

impl Reply {
    /// An HTTP answer with a status, headers and body.
    pub fn status(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Reply {
        let mut h = HeaderMap::new();
        h.add(":status", status.to_string());
        for (k, v) in headers {
            h.add(*k, *v);
        }
        Reply::Http(HttpCallResponse {
            headers: h,
            body: body.into(),
            trailers: HeaderMap::new(),
        })
    }

    /// A 200 answer with a JSON body.
    pub fn json(body: &serde_json::Value) -> Reply {
        Reply::status(
            200,
            &[("content-type", "application/json")],
            body.to_string(),
        )
    }
}

pub(crate) type HttpScript = Box<dyn Fn(&HttpCallRequest) -> Reply>;
pub(crate) type GrpcScript = Box<dyn Fn(&GrpcCallRequest) -> Result<GrpcCallResponse, GrpcStatus>>;

pub(crate) enum Cluster {
    Script(HttpScript),
    Url(String),
    Grpc(GrpcScript),
}

#[derive(Default)]
pub(crate) struct BedClusters {
    pub clusters: HashMap<String, Cluster>,
    pub real: HashMap<String, HttpCluster>,
    /// Every call made, in order: (cluster, request).
    pub calls: RefCell<Vec<(String, HttpCallRequest)>>,
    pub grpc_calls: RefCell<Vec<(String, GrpcCallRequest)>>,
}

impl BedClusters {
    pub fn connect_real(&mut self) -> Result<(), String> {
        for (name, c) in &self.clusters {
            if let Cluster::Url(url) = c {
                self.real.insert(
                    name.clone(),
                    HttpCluster::new(url, Duration::from_secs(1), None)?,
                );
            }
        }
        Ok(())
    }
}

impl Clusters for BedClusters {
    fn has_cluster(&self, name: &str) -> bool {
        self.clusters.contains_key(name)
    }

    fn names(&self) -> Arc<dyn Fn(&str) -> bool + Send + Sync> {
        let names: HashSet<String> = self.clusters.keys().cloned().collect();
        Arc::new(move |n| names.contains(n))
    }

    fn http_call(
        &self,
        cluster: &str,
        request: HttpCallRequest,
    ) -> LocalFuture<Result<HttpCallResponse, CallFailure>> {
        self.calls
            .borrow_mut()
            .push((cluster.to_owned(), request.clone()));
        if let Some(real) = self.real.get(cluster) {
            return real.call(request);
        }
        let reply = match self.clusters.get(cluster) {
            Some(Cluster::Script(f)) => f(&request),
            _ => Reply::Fail(CallFailure::ConnectFailed(
                "no such scripted cluster".into(),
            )),
        };
        Box::pin(async move {
            match reply {
                Reply::Http(r) => Ok(r),
                Reply::Fail(f) => Err(f),
                Reply::Never => std::future::pending().await,
            }
        })
    }

    fn grpc_call(
        &self,
        cluster: &str,
        request: GrpcCallRequest,
    ) -> LocalFuture<Result<GrpcCallResponse, GrpcStatus>> {
        self.grpc_calls
            .borrow_mut()
            .push((cluster.to_owned(), request.clone()));
        let result = match self.clusters.get(cluster) {
            Some(Cluster::Grpc(f)) => f(&request),
            _ => Err(GrpcStatus {
                code: GrpcStatus::UNAVAILABLE,
                message: "not a gRPC cluster".into(),
            }),
        };
        Box::pin(async move { result })
    }
}
