//! The HTTP client of JWKS fetches and introspection calls, and where they run.

use std::{future::Future, path::Path, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{body::Incoming, Response};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tokio::runtime::Handle;

use crate::config::UpstreamTlsConfig;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client trusting `ca` (absent: the system's CA bundle).
pub fn client(ca: Option<&Path>, connect_timeout: Duration) -> Result<HttpClient, String> {
    let tls = crate::tls::client_config(&UpstreamTlsConfig {
        ca: ca.map(Path::to_path_buf),
        ..UpstreamTlsConfig::default()
    })?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(4)
        .build(connector))
}

/// Sends `request` and reads a 200 answer's body of at most `limit` bytes, all within
/// `timeout`; any other outcome is an error saying what happened.
pub async fn send(
    client: &HttpClient,
    request: hyper::Request<Full<Bytes>>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, String> {
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("request failed: {}", crate::xdp::error_chain(&e)))?;
        if response.status() != hyper::StatusCode::OK {
            return Err(format!("answered {}", response.status()));
        }
        body(response, limit).await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {}", humantime::format_duration(timeout)))?
}

/// Reads a response body of at most `limit` bytes.
pub async fn body(response: Response<Incoming>, limit: usize) -> Result<Bytes, String> {
    Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| format!("reading the answer: {e}"))
}

/// Runs outbound calls on the daemon's main runtime: requests are served on per-thread
/// runtimes, and connections of the shared client must live on one that outlives them.
#[derive(Clone)]
pub struct Spawner(Option<Handle>);

impl Spawner {
    /// The runtime of the caller, when there is one.
    pub fn current() -> Spawner {
        Spawner(Handle::try_current().ok())
    }

    /// Runs `f` to completion on the main runtime (or here without one).
    pub async fn run<F>(&self, f: F) -> Result<F::Output, String>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.0 {
            Some(h) => h.spawn(f).await.map_err(|e| format!("task failed: {e}")),
            None => Ok(f.await),
        }
    }

    /// Starts a background task; false without a runtime.
    pub fn spawn<F>(&self, f: F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match &self.0 {
            Some(h) => {
                h.spawn(f);
                true
            }
            None => false,
        }
    }
}
