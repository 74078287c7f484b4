//! TLS end to end: the real `gateway` terminating TLS with certificates from a CA made at test
//! time (SNI, ALPN h2 and http/1.1, TLS 1.2 and 1.3), h2c on the plain listener, and HTTPS with
//! mutual TLS and HTTP/2 to an upstream.

use std::{net::SocketAddr, sync::Arc};

use integration_tests::{
    harness::{Daemon, Setup},
    web::{self, free_port, get, h2c, https, send, Pki, Upstream},
};
use rustls_pki_types::{pem::PemObject as _, CertificateDer, ServerName};
use tokio::io::AsyncWriteExt as _;

/// Handshakes with `sni` (and only `versions`); returns the leaf certificate and the ALPN.
async fn handshake(
    pki: &Pki,
    addr: SocketAddr,
    sni: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<(CertificateDer<'static>, Option<Vec<u8>>), String> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates({
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(pki.ca_path()).unwrap())
            .unwrap();
        roots
    })
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), stream)
        .await
        .map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    Ok((
        conn.peer_certificates().unwrap()[0].clone().into_owned(),
        conn.alpn_protocol().map(|p| p.to_vec()),
    ))
}

fn leaf(issued: &web::Issued) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(&issued.cert).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sni_alpn_h2_and_mutual_tls_upstreams() {
    let setup = Setup::new();
    let pki = Pki::new(setup.dir.path());
    let a = pki.issue("a", &["a.example.test"]);
    let w = pki.issue("w", &["*.w.example.test", "w.example.test"]);
    // The upstream wants HTTP/2 over TLS and a client certificate from the test CA.
    let upstream_cert = pki.issue("upstream", &["upstream.internal"]);
    pki.issue("client", &["gateway.internal"]);
    let secure = Upstream::start_with(
        "secure",
        Some(pki.server_config(&upstream_cert, true)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let plain = Upstream::start("plain").await;
    let port = free_port();
    let tls_port = free_port();
    let rest = format!(
        r#"
[security_headers]
strict_transport_security = "max-age=600"

[upstreams.secure]
targets = ["{secure}"]
protocol = "http2"
tls = {{ ca = "ca.pem", server_name = "upstream.internal", cert = "client.pem", key = "client.key" }}

[upstreams.plain]
targets = ["{plain}"]

[[routes]]
path_prefix = "/secure/stall"
upstream = "secure"
timeout = "1s"

[[routes]]
path_prefix = "/secure"
upstream = "secure"

[[routes]]
upstream = "plain"
"#,
        secure = secure.addr,
        plain = plain.addr
    );
    let proxy_keys = format!(
        "\n[proxy.tls]\nlisten = [\"127.0.0.1:{tls_port}\"]\n[[proxy.tls.certificates]]\ncert = \"a.pem\"\nkey = \"a.key\"\n[[proxy.tls.certificates]]\ncert = \"w.pem\"\nkey = \"w.key\"\n"
    );
    let config = web::write_config(&setup, port, &proxy_keys, &rest);
    let metrics = web::with_metrics(&config);
    let daemon = Daemon::start_local(&setup, &config);
    let tls_addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();

    // SNI picks the certificate: exact name, wildcard, else the first one.
    let v13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let v12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    let (cert, alpn) = handshake(&pki, tls_addr, "a.example.test", v13)
        .await
        .unwrap();
    assert_eq!(cert, leaf(&a));
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (cert, _) = handshake(&pki, tls_addr, "api.w.example.test", v13)
        .await
        .unwrap();
    assert_eq!(cert, leaf(&w));
    let (cert, _) = handshake(&pki, tls_addr, "w.example.test", v12)
        .await
        .unwrap();
    assert_eq!(cert, leaf(&w), "TLS 1.2 works too");
    // A name no certificate has gets the default one, which the client then refuses.
    let err = handshake(&pki, tls_addr, "other.test", v13)
        .await
        .unwrap_err();
    assert!(
        err.contains("certificate") || err.contains("Certificate"),
        "{err}"
    );

    // HTTP/2 by ALPN, HTTP/1.1 when the client offers only that; forwarded as https.
    let url = format!("https://127.0.0.1:{tls_port}/hello");
    let r = send(
        &https(&pki, "a.example.test", true),
        get(&url, "a.example.test", &[]),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.version, hyper::Version::HTTP_2);
    assert_eq!(r.json["upstream"], "plain");
    // HSTS over TLS only, once, from hyper's path (HTTP/2) and the fast path (HTTP/1.1).
    let hsts = |r: &web::Reply| -> Vec<String> {
        r.headers
            .get_all("strict-transport-security")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(hsts(&r), ["max-age=600"]);
    assert_eq!(r.json["headers"]["x-forwarded-proto"], "https");
    assert!(r.json["headers"]["forwarded"]
        .as_str()
        .unwrap()
        .contains("proto=https"));
    let r = send(
        &https(&pki, "a.example.test", false),
        get(&url, "a.example.test", &[]),
    )
    .await;
    assert_eq!(r.version, hyper::Version::HTTP_11);
    assert_eq!(r.status, 200);
    assert_eq!(hsts(&r), ["max-age=600"]);
    assert_eq!(r.headers.get_all("x-request-id").iter().count(), 1);

    // h2c (prior knowledge) on the plain listener.
    let r = send(&h2c(), get(&format!("http://127.0.0.1:{port}/x"), "x", &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, hyper::Version::HTTP_2);
    assert!(hsts(&r).is_empty(), "no HSTS over plain HTTP");

    // To the upstream: HTTPS with the custom CA, SNI upstream.internal, the client
    // certificate (the upstream refuses a handshake without one), HTTP/2.
    let r = send(
        &https(&pki, "a.example.test", true),
        get(
            &format!("https://127.0.0.1:{tls_port}/secure/x"),
            "a.example.test",
            &[("x-forwarded-proto", "http"), ("x-request-id", "tls-1")],
        ),
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "{:?} {}",
        r.json,
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json["upstream"], "secure");
    assert_eq!(r.json["version"], "HTTP/2.0");
    // hyper's client gets the forwarding fields too, in place of the client's.
    let h = &r.json["headers"];
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    // The :authority names the host (RFC 9113 section 8.3.1), not the Host field.
    assert_eq!(h["x-forwarded-host"], "127.0.0.1");
    assert_eq!(h["x-request-id"], "tls-1");
    assert_eq!(secure.served(), 1);

    // That upstream stops in the middle of a body: cut off after the route's timeout (1 s),
    // rather than held open for ever.
    let client = https(&pki, "a.example.test", true);
    let started = std::time::Instant::now();
    let response = client
        .request(get(
            &format!("https://127.0.0.1:{tls_port}/secure/stall"),
            "a.example.test",
            &[("x-test-stall", "1")],
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        http_body_util::BodyExt::collect(response.into_body()),
    )
    .await
    .expect("the stalled body was not cut off");
    let took = started.elapsed();
    assert!(body.is_err(), "a body that never ended came out whole");
    assert!(
        took >= std::time::Duration::from_millis(900) && took < std::time::Duration::from_secs(8),
        "{took:?}"
    );
    assert_eq!(secure.served(), 2);

    // Garbage instead of a handshake is counted and closed.
    let before = web::metric(
        &web::scrape(metrics).await,
        "gateway_tls_handshake_failures_total",
    )
    .unwrap();
    let mut s = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut s, &mut buf),
    )
    .await
    .unwrap();
    let after = web::metric(
        &web::scrape(metrics).await,
        "gateway_tls_handshake_failures_total",
    )
    .unwrap();
    assert!(after >= before + 1.0, "{before} -> {after}");

    assert!(daemon.stop().success());
}

#[test]
fn tls_config_errors_name_the_key() {
    let setup = Setup::new();
    let pki = Pki::new(setup.dir.path());
    let a = pki.issue("a", &["a.example.test"]);
    let b = pki.issue("b", &["b.example.test"]);
    let port = free_port();
    let cases = [
        (
            format!("\n[proxy.tls]\nlisten = [\"127.0.0.1:{}\"]\n[[proxy.tls.certificates]]\ncert = \"a.pem\"\nkey = \"b.key\"\n", free_port()),
            "proxy.tls.certificates[0].cert:",
            "does not belong",
        ),
        (
            format!("\n[proxy.tls]\nlisten = [\"127.0.0.1:{}\"]\n[[proxy.tls.certificates]]\ncert = \"missing.pem\"\nkey = \"a.key\"\n", free_port()),
            "proxy.tls.certificates[0].cert:",
            "missing.pem",
        ),
        (
            format!("\n[proxy.tls]\nlisten = [\"127.0.0.1:{}\"]\n", free_port()),
            "proxy.tls.certificates:",
            "at least one",
        ),
    ];
    let _ = (&a, &b);
    for (keys, key, what) in cases {
        let config = web::write_config(&setup, port, &keys, "");
        let out = std::process::Command::new(integration_tests::harness::gateway_bin())
            .arg("check-config")
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("gateway.toml:") && stderr.contains(key) && stderr.contains(what),
            "{keys}: {stderr}"
        );
    }
}
