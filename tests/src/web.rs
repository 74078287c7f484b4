//! HTTP pieces of the proxy tests: a CA made at test time, upstream servers (HTTP/1.1, h2c, TLS,
//! mutual TLS) on 127.0.0.1 with behaviour chosen per request, clients, and config files.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU16, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, Request, Response};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

use crate::harness::Setup;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority made at test time, and the certificates it issues, as PEM files.
pub struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

/// A certificate and key issued by a [`Pki`].
#[derive(Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gateway test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca,
            ca_key,
        }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a certificate for `names` (host names or IP addresses), saved as `FILE.pem` and
    /// `FILE.key`.
    pub fn issue(&self, file: &str, names: &[&str]) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or(file),
        );
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let issued = Issued {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }

    /// A client config trusting this CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> ClientConfig {
        let mut c = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        c
    }

    /// A server config with `issued`, ALPN h2 and http/1.1; with `client_auth`, clients must
    /// show a certificate from this CA.
    pub fn server_config(&self, issued: &Issued, client_auth: bool) -> Arc<ServerConfig> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&issued.cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&issued.key).unwrap();
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_auth {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(self.roots()),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(certs, key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// An upstream on 127.0.0.1 speaking HTTP/1.1 and HTTP/2 (h2c, or ALPN over TLS). It answers
/// with JSON describing the request (`upstream`, `method`, `uri`, `version`, `headers`,
/// `body_bytes`). `x-test-sleep-ms` delays the answer, `x-test-status` sets the status, and
/// `GET /healthz` answers with [`Upstream::health`].
pub struct Upstream {
    pub addr: SocketAddr,
    /// Requests served, health checks not included.
    pub served: Arc<AtomicUsize>,
    pub checks: Arc<AtomicUsize>,
    pub health: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(name: &'static str) -> Upstream {
        Upstream::start_with(name, None, "127.0.0.1:0".parse().unwrap()).await
    }

    /// With `tls`, a TLS server; on `addr` (port 0: any).
    pub async fn start_with(
        name: &'static str,
        tls: Option<Arc<ServerConfig>>,
        addr: SocketAddr,
    ) -> Upstream {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let checks = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(AtomicU16::new(200));
        let state = (served.clone(), checks.clone(), health.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        answer(name, req, state)
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(config) => {
                            let Ok(stream) =
                                tokio_rustls::TlsAcceptor::from(config).accept(stream).await
                            else {
                                return;
                            };
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            served,
            checks,
            health,
            task,
        }
    }

    pub fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    /// Stops accepting (connections already open are served on until they close).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type State = (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicU16>);

/// A response body that sends one chunk and then nothing, for ever.
pub struct Stall(Option<Bytes>);

impl hyper::body::Body for Stall {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        match self.0.take() {
            Some(b) => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(b)))),
            None => std::task::Poll::Pending,
        }
    }
}

type AnswerBody = http_body_util::Either<Full<Bytes>, Stall>;

/// The answer: a JSON echo of the request; `x-test-stall` (any value) makes it one chunk of
/// a body that never ends; see `echo` for the other `x-test-*` fields.
async fn answer(
    name: &str,
    req: Request<Incoming>,
    state: State,
) -> Result<Response<AnswerBody>, Infallible> {
    if req.headers().contains_key("x-test-stall") {
        state.0.fetch_add(1, Ordering::Relaxed);
        let body = Stall(Some(Bytes::from_static(b"partial")));
        return Ok(Response::new(http_body_util::Either::Right(body)));
    }
    let r = echo(name, req, state).await?;
    Ok(r.map(http_body_util::Either::Left))
}

async fn echo(
    name: &str,
    req: Request<Incoming>,
    (served, checks, health): State,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/healthz" {
        checks.fetch_add(1, Ordering::Relaxed);
        let mut r = Response::new(Full::new(Bytes::from_static(b"health")));
        *r.status_mut() = hyper::StatusCode::from_u16(health.load(Ordering::Relaxed)).unwrap();
        return Ok(r);
    }
    served.fetch_add(1, Ordering::Relaxed);
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let sleep = header("x-test-sleep-ms");
    let status = header("x-test-status").unwrap_or(200) as u16;
    // A field sent more than once shows as its values joined, so a test sees duplicates.
    let mut headers: HashMap<String, String> = HashMap::new();
    for (k, v) in req.headers() {
        let v = v.to_str().unwrap_or_default();
        headers
            .entry(k.to_string())
            .and_modify(|seen| {
                seen.push_str(", ");
                seen.push_str(v);
            })
            .or_insert_with(|| v.to_string());
    }
    // `x-test-respond-header: NAME: VALUE` (repeatable): fields the answer carries.
    let respond_with: Vec<(String, String)> = req
        .headers()
        .get_all("x-test-respond-header")
        .iter()
        .filter_map(|v| {
            let (n, v) = v.to_str().ok()?.split_once(':')?;
            Some((n.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let body_bytes = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => usize::MAX,
    };
    if let Some(ms) = sleep {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let body = serde_json::json!({
        "upstream": name,
        "method": method,
        "uri": uri,
        "version": version,
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    response
        .headers_mut()
        .insert("connection", "keep-alive, x-hop".parse().unwrap());
    response
        .headers_mut()
        .insert("x-hop", "must not reach the client".parse().unwrap());
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    // Headers that give the software away, which the gateway removes by default.
    response
        .headers_mut()
        .insert("server", "test-upstream/1.0".parse().unwrap());
    response
        .headers_mut()
        .insert("x-powered-by", "PHP/5.2".parse().unwrap());
    for (n, v) in respond_with {
        response.headers_mut().append(
            hyper::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    Ok(response)
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Config text with XDP off, the proxy on `port` (`[proxy]` keys may follow in `proxy_keys`),
/// the setup's state and socket, and `rest` (upstreams, routes, other tables).
pub fn config_text(setup: &Setup, port: u16, proxy_keys: &str, rest: &str) -> String {
    format!(
        "[xdp]\nenabled = false\n\n[proxy]\nlisten = [\"127.0.0.1:{port}\"]\nconnect_timeout = \"2s\"\ntimeout = \"5s\"\n{proxy_keys}\n\n[state]\ndir = \"{}\"\n\n[admin]\nsocket = \"{}\"\n\n[audit]\noutput = \"{}\"\n\n{rest}\n",
        setup.state_dir().display(),
        setup.socket().display(),
        setup.dir.path().join("audit.log").display(),
    )
}

/// Writes [`config_text`] to the setup's gateway.toml.
pub fn write_config(setup: &Setup, port: u16, proxy_keys: &str, rest: &str) -> PathBuf {
    let path = setup.dir.path().join("gateway.toml");
    std::fs::write(&path, config_text(setup, port, proxy_keys, rest)).unwrap();
    path
}

/// Adds a metrics listener on a free port to the config at `path`; returns its address.
pub fn with_metrics(path: &Path) -> SocketAddr {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = std::fs::read_to_string(path).unwrap().replacen(
        "[admin]\n",
        &format!("[admin]\nmetrics_listen = \"{addr}\"\n"),
        1,
    );
    std::fs::write(path, text).unwrap();
    addr
}

/// The audit lines written so far.
pub fn audit_lines(setup: &Setup) -> Vec<Value> {
    let text = std::fs::read_to_string(setup.dir.path().join("audit.log")).unwrap_or_default();
    // The writer thread may be mid-line: only lines it has ended count.
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub version: hyper::Version,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
    pub json: Value,
}

pub type PlainClient = Client<HttpConnector, Full<Bytes>>;
pub type TlsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An HTTP/1.1 client (keep-alive).
pub fn http1() -> PlainClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 client with prior knowledge (h2c).
pub fn h2c() -> PlainClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// An HTTPS client trusting `pki`, sending `sni` (the URIs say 127.0.0.1), offering h2 and
/// http/1.1 by ALPN, or only http/1.1.
pub fn https(pki: &Pki, sni: &str, h2: bool) -> TlsClient {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(pki.client_config(&[]))
        .https_only()
        .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(
            ServerName::try_from(sni.to_string()).unwrap(),
        ));
    let connector = if h2 {
        builder.enable_all_versions().build()
    } else {
        builder.enable_http1().build()
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Sends `req` and reads the whole response.
pub async fn send<C>(client: &Client<C, Full<Bytes>>, req: Request<Full<Bytes>>) -> Reply
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("no answer within 20 s")
        .expect("request through the gateway");
    let status = response.status().as_u16();
    let version = response.version();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Reply {
        status,
        version,
        headers,
        body,
        json,
    }
}

/// A request with `host` and `headers` and an empty body.
pub fn get(url: &str, host: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::get(url).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(Bytes::new())).unwrap()
}

/// Polls `f` every 50 ms until it is true or `within` has passed; returns its last value.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET `path` on the metrics listener `addr`: the body.
pub async fn scrape(addr: SocketAddr) -> String {
    let reply = send(
        &http1(),
        get(&format!("http://{addr}/metrics"), "metrics", &[]),
    )
    .await;
    assert_eq!(reply.status, 200);
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// Scrapes every 100 ms, for up to 5 s, until every series in `want` has its value; returns
/// the last scrape, so a failing assertion can show it.
pub async fn scrape_until(addr: SocketAddr, want: &[(&str, f64)]) -> (bool, String) {
    let mut text = String::new();
    for _ in 0..50 {
        text = scrape(addr).await;
        if want
            .iter()
            .all(|(series, v)| metric(&text, series) == Some(*v))
        {
            return (true, text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (false, text)
}

/// The value of the metric line that starts with `series` (name and labels), if any.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
