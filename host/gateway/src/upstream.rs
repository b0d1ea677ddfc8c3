//! Connections to services, one pool per worker: proxied requests, and the clusters
//! filters reach by service name with `http_call` and `grpc_call`.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis_clients::{GrpcCluster, HttpCluster};
use portcullis_engine::{
    CallFailure, Clusters, GrpcCallRequest, GrpcCallResponse, GrpcStatus, HttpCallRequest,
    HttpCallResponse, LocalFuture,
};

use crate::config::Service;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// A service as one worker reaches it.
pub struct ServiceClient {
    pub service: Arc<Service>,
    pub client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
    next: Cell<usize>,
}

impl ServiceClient {
    pub fn new(service: Arc<Service>) -> ServiceClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(service.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(std::time::Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(portcullis_clients::tls::connector(
                connector,
                service.tls.clone(),
            ));
        ServiceClient {
            service,
            client,
            next: Cell::new(0),
        }
    }

    /// The next address, round robin.
    pub fn next_authority(&self) -> &http::uri::Authority {
        let urls = &self.service.urls;
        let i = self.next.get();
        self.next.set((i + 1) % urls.len().max(1));
        urls[i % urls.len()].authority().expect("checked at load")
    }
}

/// The clusters filters call: every service, by name.
pub struct GatewayClusters {
    http: HashMap<String, (Vec<HttpCluster>, Cell<usize>)>,
    grpc: HashMap<String, (Vec<GrpcCluster>, Cell<usize>)>,
    names: Arc<HashSet<String>>,
}

impl GatewayClusters {
    pub fn new(services: &[Arc<Service>]) -> GatewayClusters {
        let mut http = HashMap::new();
        let mut grpc = HashMap::new();
        for s in services {
            let urls: Vec<String> = s.urls.iter().map(|u| u.to_string()).collect();
            let h: Vec<HttpCluster> = urls
                .iter()
                .filter_map(|u| HttpCluster::new(u, s.connect_timeout, s.tls.clone()).ok())
                .map(|c| c.max_body(s.max_response_body))
                .collect();
            let g: Vec<GrpcCluster> = urls
                .iter()
                .filter_map(|u| GrpcCluster::new(u, s.connect_timeout).ok())
                .map(|c| c.max_body(s.max_response_body))
                .collect();
            http.insert(s.name.clone(), (h, Cell::new(0)));
            grpc.insert(s.name.clone(), (g, Cell::new(0)));
        }
        let names = Arc::new(services.iter().map(|s| s.name.clone()).collect());
        GatewayClusters { http, grpc, names }
    }
}

fn pick<T>(pool: &(Vec<T>, Cell<usize>)) -> Option<&T> {
    let i = pool.1.get();
    pool.1.set(i.wrapping_add(1));
    pool.0.get(i % pool.0.len().max(1))
}

impl Clusters for GatewayClusters {
    fn has_cluster(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    fn names(&self) -> Arc<dyn Fn(&str) -> bool + Send + Sync> {
        let names = self.names.clone();
        Arc::new(move |n| names.contains(n))
    }

    fn http_call(
        &self,
        cluster: &str,
        request: HttpCallRequest,
    ) -> LocalFuture<Result<HttpCallResponse, CallFailure>> {
        match self.http.get(cluster).and_then(pick) {
            Some(c) => c.call(request),
            None => Box::pin(async { Err(CallFailure::ConnectFailed("no such service".into())) }),
        }
    }

    fn grpc_call(
        &self,
        cluster: &str,
        request: GrpcCallRequest,
    ) -> LocalFuture<Result<GrpcCallResponse, GrpcStatus>> {
        match self.grpc.get(cluster).and_then(pick) {
            Some(c) => c.call(request),
            None => Box::pin(async {
                Err(GrpcStatus {
                    code: GrpcStatus::UNAVAILABLE,
                    message: "no such service".into(),
                })
            }),
        }
    }
}
