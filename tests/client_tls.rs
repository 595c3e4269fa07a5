//! The client over TLS: a private CA bundle, ALPN choosing HTTP/2 or HTTP/1.1, mutual TLS
//! with a client certificate, and configuration errors. The server is a small hyper server
//! behind rustls on 127.0.0.1; the certificates are in `tests/data/tls`.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::Version;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ksql_lake::ksqldb::{ClientConfig, ClientError, Http2Mode, KsqlClient};
use tokio::time::timeout;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{crypto, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

const WAIT: Duration = Duration::from_secs(10);
const INFO: &str = r#"{"KsqlServerInfo":{"version":"0.29.0","kafkaClusterId":"c1","ksqlServiceId":"s1"}}"#;

fn tls_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls").join(name)
}

fn certificates(name: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(tls_file(name)).unwrap().map(Result::unwrap).collect()
}

/// Serves `/info` over TLS with ALPN `h2` and `http/1.1`; records the HTTP version of every
/// request. With `require_client_cert`, only clients with a certificate from the test CA get in.
async fn tls_server(require_client_cert: bool) -> (String, Arc<Mutex<Vec<Version>>>) {
    let provider = Arc::new(crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
    let builder = if require_client_cert {
        let mut roots = RootCertStore::empty();
        for certificate in certificates("ca.pem") {
            roots.add(certificate).unwrap();
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let key = PrivateKeyDer::from_pem_file(tls_file("server.key")).unwrap();
    let mut config = builder.with_single_cert(certificates("server.pem"), key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let versions = Arc::new(Mutex::new(Vec::new()));
    let seen = versions.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(socket).await else { return };
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    seen.lock().unwrap().push(request.version());
                    async { Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(INFO)))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, versions)
}

fn config(url: &str, http2: Http2Mode) -> ClientConfig {
    let mut config = ClientConfig::new(url.parse().unwrap());
    config.http2 = http2;
    config.ca_file = Some(tls_file("ca.pem"));
    config
}

#[tokio::test]
async fn alpn_picks_http2_in_auto_and_http1_in_never() {
    let (url, versions) = tls_server(false).await;
    for (mode, expected) in [(Http2Mode::Auto, Version::HTTP_2), (Http2Mode::Never, Version::HTTP_11)] {
        let client = KsqlClient::new(config(&url, mode)).unwrap();
        let info = timeout(WAIT, client.info()).await.unwrap().unwrap();
        assert_eq!((info.kafka_cluster_id.as_str(), info.service_id.as_str()), ("c1", "s1"));
        assert_eq!(versions.lock().unwrap().last(), Some(&expected), "{mode:?}");
    }
}

#[tokio::test]
async fn an_unknown_ca_is_refused() {
    let (url, versions) = tls_server(false).await;
    let mut config = config(&url, Http2Mode::Auto);
    config.ca_file = None;
    let client = KsqlClient::new(config).unwrap();
    let error = timeout(WAIT, client.info()).await.unwrap().unwrap_err();
    assert!(matches!(error, ClientError::Connect { .. }), "{error:?}");
    assert!(versions.lock().unwrap().is_empty());
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let (url, versions) = tls_server(true).await;
    let anonymous = KsqlClient::new(config(&url, Http2Mode::Auto)).unwrap();
    assert!(timeout(WAIT, anonymous.info()).await.unwrap().is_err());
    assert!(versions.lock().unwrap().is_empty());

    let mut config = config(&url, Http2Mode::Auto);
    config.client_cert = Some(tls_file("client.pem"));
    config.client_key = Some(tls_file("client.key"));
    let client = KsqlClient::new(config).unwrap();
    let info = timeout(WAIT, client.info()).await.unwrap().unwrap();
    assert_eq!(info.version, "0.29.0");
    assert_eq!(versions.lock().unwrap().as_slice(), [Version::HTTP_2]);
}

#[test]
fn bad_tls_configuration_is_reported() {
    let base = config("https://127.0.0.1:1", Http2Mode::Auto);
    let mut missing = base.clone();
    missing.ca_file = Some(tls_file("no-such.pem"));
    let mut garbage = base.clone();
    garbage.ca_file = Some(tls_file("README.md"));
    let mut half = base.clone();
    half.client_cert = Some(tls_file("client.pem"));
    let mut scheme = base;
    scheme.url = "ftp://127.0.0.1/".parse().unwrap();
    for (label, config) in [("missing", missing), ("garbage", garbage), ("half", half), ("scheme", scheme)] {
        match KsqlClient::new(config) {
            Err(error @ ClientError::Config(_)) => assert!(!error.is_retryable()),
            Err(other) => panic!("{label}: unexpected {other:?}"),
            Ok(_) => panic!("{label}: accepted"),
        }
    }
}
