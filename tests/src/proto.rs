//! The HTTP protocols the S3 contract runs over, and clients for each: HTTP/1.1 (plain),
//! HTTP/2 over TLS (ALPN `h2`, what clients negotiate whenever TLS is on) and h2c (HTTP/2
//! with prior knowledge on a plain connection, which the server also accepts).
//!
//! aws-sdk-s3's own connection pool speaks HTTP/1.1 on `http://` and offers `h2` by ALPN on
//! `https://`; it has no h2c, so for h2c the SDK is given a small [`HttpClient`] over hyper's
//! HTTP/2-only client.

use std::path::Path;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::Response;
use aws_smithy_types::body::SdkBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use hyper_util::rt::TokioExecutor;

use crate::Depot;

/// A protocol the contract is checked over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 on a plain connection.
    H1,
    /// HTTP/2 over TLS, negotiated by ALPN.
    H2,
    /// HTTP/2 with prior knowledge on a plain connection.
    H2c,
}

impl Proto {
    /// The `depot serve` flags this protocol needs.
    pub fn serve_args(self) -> &'static [&'static str] {
        match self {
            Self::H2 => &["--tls", "on"],
            Self::H1 | Self::H2c => &["--tls", "off"],
        }
    }

    /// Starts `depot serve ARCHIVE` for this protocol, plus `args`.
    ///
    /// # Panics
    /// When the server does not start.
    pub fn start(self, archive: &Path, args: &[&str]) -> Depot {
        let mut all = self.serve_args().to_vec();
        all.extend_from_slice(args);
        let mut depot = Depot::start(archive, &all);
        depot.proto = self;
        depot
    }
}

/// The h2c client: hyper's legacy client restricted to HTTP/2.
#[derive(Debug, Clone)]
struct H2cClient(Client<TcpConnector, SdkBody>);

impl HttpConnector for H2cClient {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.0.clone();
        HttpConnectorFuture::new(async move {
            let request = request.try_into_http1x().map_err(|e| ConnectorError::other(e.into(), None))?;
            let response = client.request(request).await.map_err(|e| ConnectorError::io(e.into()))?;
            let response = response.map(SdkBody::from_body_1_x);
            Response::try_from(response).map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

impl HttpClient for H2cClient {
    fn http_connector(&self, _: &HttpConnectorSettings, _: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

/// An aws-sdk-s3 client speaking h2c to `endpoint` (`http://...`).
pub fn h2c_s3_client(endpoint: &str, access_key: &str, secret_key: &str, region: &str) -> aws_sdk_s3::Client {
    let client = Client::builder(TokioExecutor::new()).http2_only(true).build(TcpConnector::new());
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(region.to_owned()))
        .credentials_provider(Credentials::new(access_key, secret_key, None, None, "depot-test"))
        .force_path_style(true)
        .http_client(H2cClient(client))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}
