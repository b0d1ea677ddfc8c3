//! `http_call` over a real connection to one cluster address.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis_engine::{CallFailure, HeaderMap, HttpCallRequest, HttpCallResponse, LocalFuture};

/// A cluster reached over HTTP/1.1 at `base` (e.g. `http://127.0.0.1:9000`), or over
/// TLS for an `https://` URL.
#[derive(Clone, Debug)]
pub struct HttpCluster {
    base: http::uri::Authority,
    scheme: http::uri::Scheme,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// The largest answer body taken; a longer one fails the call before it is all
    /// held (a JWKS or key service streaming gigabytes would exhaust the host).
    max_body: usize,
}

/// [`HttpCluster::max_body`] unless the embedder says otherwise: the engine's own
/// bound on a body a filter may hold.
const MAX_BODY: usize = 16 << 20;

impl HttpCluster {
    /// A cluster at `url`; an `https://` one needs `tls` (see [`crate::tls`]).
    pub fn new(
        url: &str,
        connect_timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<HttpCluster, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("bad cluster url `{url}`: {e}"))?;
        let scheme = uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP);
        if scheme == http::uri::Scheme::HTTPS && tls.is_none() {
            return Err(format!(
                "cluster url `{url}`: https needs a TLS configuration"
            ));
        }
        if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
            return Err(format!("cluster url `{url}`: expected http:// or https://"));
        }
        let base = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("cluster url `{url}` has no host"))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(crate::tls::connector(connector, tls));
        Ok(HttpCluster {
            base,
            scheme,
            client,
            max_body: MAX_BODY,
        })
    }

    /// Fails a call whose answer body is longer than `bytes` (the gateway gives the
    /// service's `max_response_body_bytes`).
    pub fn max_body(mut self, bytes: u64) -> HttpCluster {
        self.max_body = usize::try_from(bytes).unwrap_or(usize::MAX);
        self
    }

    /// Sends the filter's request. `:authority` from the filter becomes the `Host`
    /// header; the connection goes to the cluster's address whatever it says.
    pub fn call(
        &self,
        request: HttpCallRequest,
    ) -> LocalFuture<Result<HttpCallResponse, CallFailure>> {
        let this = self.clone();
        Box::pin(async move { this.send(request).await })
    }

    async fn send(&self, request: HttpCallRequest) -> Result<HttpCallResponse, CallFailure> {
        let method = request.headers.get_str(":method").unwrap_or("GET");
        let path = request.headers.get_str(":path").unwrap_or("/");
        let uri = http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.base.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| CallFailure::Reset(format!("bad :path: {e}")))?;
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (k, v) in request.headers.iter() {
            match k {
                ":method" | ":path" | ":scheme" => {}
                ":authority" => builder = builder.header(http::header::HOST, v),
                _ => builder = builder.header(k, v),
            }
        }
        let req = builder
            .body(Full::new(Bytes::from(request.body)))
            .map_err(|e| CallFailure::Reset(e.to_string()))?;
        let resp = self.client.request(req).await.map_err(|e| {
            if e.is_connect() {
                CallFailure::ConnectFailed(format!("{e:?}"))
            } else {
                CallFailure::Reset(e.to_string())
            }
        })?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, self.max_body)
            .collect()
            .await
            .map_err(|e| {
                CallFailure::Reset(match e.is::<http_body_util::LengthLimitError>() {
                    true => format!("an answer body past {} bytes", self.max_body),
                    false => e.to_string(),
                })
            })?;
        let trailers = body.trailers().cloned();
        let body = body.to_bytes().to_vec();
        let mut headers = HeaderMap::new();
        headers.add(":status", parts.status.as_str());
        for (k, v) in &parts.headers {
            headers.add(k.as_str(), v.as_bytes());
        }
        let mut t = HeaderMap::new();
        for (k, v) in trailers.iter().flatten() {
            t.add(k.as_str(), v.as_bytes());
        }
        Ok(HttpCallResponse {
            headers,
            body,
            trailers: t,
        })
    }
}
