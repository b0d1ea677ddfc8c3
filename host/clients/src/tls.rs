//! TLS to services (`https://` URLs): rustls with ring, trusting the system's
//! certificate store, or only the CAs of a PEM file given for the service.

use std::path::Path;
use std::sync::Arc;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// A client configuration trusting the CAs in `ca_file` (PEM), or, without one, the
/// system's certificate store. An unreadable file, a file with no certificate, or a
/// system with no trusted CA is an error naming what is wrong.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("ca_file `{}`: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("ca_file `{}`: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_file `{}`: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "ca_file `{}`: no certificate in it",
                    path.display()
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "no trusted CA in the system's certificate store: give the service a ca_file"
                        .into(),
                );
            }
        }
    }
    Ok(Arc::new(trusting(roots)))
}

/// A ring-backed client configuration with rustls' default protocol versions,
/// trusting `roots`.
fn trusting(roots: RootCertStore) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls' default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A connector for http:// and, with `tls`, https:// URLs (HTTP/1.1; the server name
/// checked is the URL's host).
pub fn connector(
    mut http: HttpConnector,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> HttpsConnector<HttpConnector> {
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match tls {
        Some(config) => builder.with_tls_config((*config).clone()),
        // Never used for an http:// URL, but the connector's type wants one.
        None => builder.with_tls_config(trusting(RootCertStore::empty())),
    };
    builder.https_or_http().enable_http1().wrap_connector(http)
}
