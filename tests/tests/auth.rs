//! Authentication end to end: the real `gateway` with JWT providers (RSA, EC P-256, Ed25519,
//! HMAC keys made at test time), a JWK set served over HTTPS that rotates, API keys, and RFC
//! 7662 introspection; every refusal is checked in the answer and in the audit log.

use std::time::Duration;

use integration_tests::{
    harness::{Daemon, Setup},
    idp::{forge, now, Idp, SigningKey},
    web::{self, free_port, get, http1, send, Pki, Reply, Upstream},
};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

const SECRET: &[u8] = b"integration-test-hmac-secret-0123456789";

struct Gateway {
    setup: Setup,
    port: u16,
    daemon: Daemon,
}

impl Gateway {
    fn start(setup: Setup, rest: &str) -> Gateway {
        let port = free_port();
        let config = web::write_config(&setup, port, "", rest);
        let daemon = Daemon::start_local(&setup, &config);
        Gateway {
            setup,
            port,
            daemon,
        }
    }

    /// GET `path` with `headers` and a request id to find its audit line.
    async fn get(&self, id: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut h = headers.to_vec();
        h.push(("x-request-id", id));
        send(
            &http1(),
            get(
                &format!("http://127.0.0.1:{}{path}", self.port),
                "gw.test",
                &h,
            ),
        )
        .await
    }

    /// The audit line of request `id`.
    async fn audit(&self, id: &str) -> Value {
        let found = web::eventually(Duration::from_secs(5), || {
            web::audit_lines(&self.setup)
                .iter()
                .any(|l| l["request_id"] == id)
        })
        .await;
        assert!(found, "no audit line for {id}:\n{}", self.daemon.log_text());
        web::audit_lines(&self.setup)
            .into_iter()
            .find(|l| l["request_id"] == id)
            .unwrap()
    }

    /// Asserts a refusal: status, error code, challenge, and the audit line's decision and rule.
    async fn refused(
        &self,
        id: &str,
        path: &str,
        headers: &[(&str, &str)],
        status: u16,
        code: &str,
        rule: &str,
    ) {
        let r = self.get(id, path, headers).await;
        assert_eq!(r.status, status, "{id}: {:?}", r.body);
        assert_eq!(r.json["error"], code, "{id}: {}", r.json);
        assert_eq!(r.json["request_id"], id);
        if status == 401 || status == 403 {
            let c = r.headers["www-authenticate"].to_str().unwrap();
            assert!(c.starts_with("Bearer realm=\"gateway\""), "{id}: {c}");
        }
        for (_, v) in headers {
            if let Some(token) = v.strip_prefix("Bearer ") {
                assert!(
                    !String::from_utf8_lossy(&r.body).contains(token),
                    "{id}: token echoed"
                );
            }
        }
        let line = self.audit(id).await;
        assert_eq!(line["decision"], "deny", "{id}: {line}");
        assert_eq!(line["rule"], rule, "{id}: {line}");
        assert_eq!(line["status"], status);
    }
}

fn claims(iss: &str, aud: &str) -> Value {
    json!({"sub": "alice", "iss": iss, "aud": aud, "exp": now() + 600, "iat": now(),
           "scope": "read write", "email": "alice@example.test"})
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// The headers the upstream received.
fn seen(r: &Reply) -> &Value {
    &r.json["headers"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_providers_accept_good_tokens_and_refuse_every_trick() {
    let setup = Setup::new();
    let dir = setup.dir.path().to_path_buf();
    let up = Upstream::start("up").await;
    let rsa = SigningKey::rsa(Algorithm::RS256);
    let pss = SigningKey::rsa(Algorithm::PS256);
    let ec = SigningKey::ec();
    let ed = SigningKey::ed25519();
    let hmac = SigningKey::hmac(SECRET);
    std::fs::write(dir.join("rsa.pem"), &rsa.public_pem).unwrap();
    std::fs::write(dir.join("ec.pem"), &ec.public_pem).unwrap();
    std::fs::write(dir.join("ed.pem"), &ed.public_pem).unwrap();
    std::fs::write(dir.join("hmac.secret"), SECRET).unwrap();
    let rest = format!(
        r#"
[upstreams.up]
targets = ["{up}"]

[auth.providers.rsa]
type = "jwt"
algorithms = ["RS256", "PS256"]
public_key_file = "rsa.pem"
issuer = "https://rsa.idp.test"
audiences = ["api"]

[auth.providers.ec]
type = "jwt"
algorithms = ["ES256"]
public_key_file = "ec.pem"
issuer = "https://ec.idp.test"
audiences = ["api"]

[auth.providers.ed]
type = "jwt"
algorithms = ["EdDSA"]
public_key_file = "ed.pem"
issuer = "https://ed.idp.test"
audiences = ["api"]

[auth.providers.hmac]
type = "jwt"
algorithms = ["HS256"]
secret_file = "hmac.secret"
issuer = "https://hmac.idp.test"
audiences = ["api"]

[[routes]]
name = "rsa"
path_prefix = "/rsa"
upstream = "up"
[routes.auth]
providers = ["rsa"]
strip_authorization = true
forward_claims = {{ sub = "x-user", email = "x-email" }}

[[routes]]
name = "multi"
path_prefix = "/multi"
upstream = "up"
[routes.auth]
providers = ["rsa", "ec", "ed", "hmac"]

[[routes]]
name = "scoped"
path_prefix = "/scoped"
upstream = "up"
[routes.auth]
providers = ["hmac"]
scopes = ["admin"]

[[routes]]
name = "optional"
path_prefix = "/optional"
upstream = "up"
[routes.auth]
mode = "optional"
providers = ["hmac"]
forward_claims = {{ sub = "x-user" }}
"#,
        up = up.addr
    );
    let gw = Gateway::start(setup, &rest);

    // Each key type on its own provider, on one route.
    for (i, (key, iss)) in [
        (&rsa, "https://rsa.idp.test"),
        (&pss, "https://rsa.idp.test"),
        (&ec, "https://ec.idp.test"),
        (&ed, "https://ed.idp.test"),
        (&hmac, "https://hmac.idp.test"),
    ]
    .into_iter()
    .enumerate()
    {
        let token = key.sign(&claims(iss, "api"), None);
        let r = gw
            .get(
                &format!("ok-{i}"),
                "/multi/x",
                &[("authorization", &bearer(&token))],
            )
            .await;
        assert_eq!(r.status, 200, "{:?} {}", key.alg, r.json);
        // Not stripped on this route: the upstream gets it.
        assert_eq!(seen(&r)["authorization"], bearer(&token));
        let line = gw.audit(&format!("ok-{i}")).await;
        assert_eq!(line["subject"], "alice");
    }
    // The same token again comes from the cache.
    let token = rsa.sign(&claims("https://rsa.idp.test", "api"), None);
    for i in 0..3 {
        let r = gw
            .get(
                &format!("fwd-{i}"),
                "/rsa/x",
                &[
                    ("authorization", &bearer(&token)),
                    ("x-user", "root"),
                    ("x-email", "root@evil.test"),
                ],
            )
            .await;
        assert_eq!(r.status, 200);
        // Claims reach the upstream, spoofed values do not, Authorization is stripped.
        assert_eq!(seen(&r)["x-user"], "alice");
        assert_eq!(seen(&r)["x-email"], "alice@example.test");
        assert!(seen(&r).get("authorization").is_none(), "{}", r.json);
    }
    // Optional route without credentials: through, but the spoofed header is gone.
    let r = gw
        .get("opt-anon", "/optional/x", &[("x-user", "root")])
        .await;
    assert_eq!(r.status, 200);
    assert!(seen(&r).get("x-user").is_none());
    let t = hmac.sign(&claims("https://hmac.idp.test", "api"), None);
    let r = gw
        .get(
            "opt-auth",
            "/optional/x",
            &[("authorization", &bearer(&t)), ("x-user", "root")],
        )
        .await;
    assert_eq!(seen(&r)["x-user"], "alice");

    // The refusals.
    let good = claims("https://rsa.idp.test", "api");
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let signed = rsa.sign(&good, None);
    let (head, rest_) = signed.split_once('.').unwrap();
    let (payload, sig) = rest_.split_once('.').unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    let tampered_sig = format!("{head}.{payload}.{flipped}{}", &sig[1..]);
    let forged_payload = format!(
        "{head}.{}.{sig}",
        base64_url(&with("sub", json!("admin")).to_string())
    );
    let confused = SigningKey::hmac(rsa.public_pem.as_bytes()).sign(&good, None);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "none",
            forge(&json!({"alg": "none", "typ": "JWT"}), &good, ""),
            "auth:alg_none",
        ),
        ("confusion", confused, "auth:alg_not_allowed"),
        (
            "unpinned",
            SigningKey::rsa(Algorithm::RS512).sign(&good, None),
            "auth:alg_not_allowed",
        ),
        (
            "expired",
            rsa.sign(&with("exp", json!(now() - 3600)), None),
            "auth:expired",
        ),
        (
            "string-exp",
            rsa.sign(&with("exp", json!((now() + 600).to_string())), None),
            "auth:bad_claim",
        ),
        (
            "nbf",
            rsa.sign(&with("nbf", json!(now() + 3600)), None),
            "auth:not_yet_valid",
        ),
        (
            "issuer",
            rsa.sign(&with("iss", json!("https://evil.test")), None),
            "auth:wrong_issuer",
        ),
        (
            "audience",
            rsa.sign(&with("aud", json!("other")), None),
            "auth:wrong_audience",
        ),
        (
            "audience-list",
            rsa.sign(&with("aud", json!(["x", "y"])), None),
            "auth:wrong_audience",
        ),
        ("tampered-sig", tampered_sig, "auth:bad_signature"),
        ("tampered-payload", forged_payload, "auth:bad_signature"),
        ("other-key", ec.sign(&good, None), "auth:alg_not_allowed"),
        ("garbage", "not-a-jwt".into(), "auth:malformed"),
    ];
    for (id, token, rule) in &cases {
        gw.refused(
            id,
            "/rsa/x",
            &[("authorization", &bearer(token))],
            401,
            "invalid_token",
            rule,
        )
        .await;
    }
    gw.refused(
        "missing",
        "/rsa/x",
        &[],
        401,
        "unauthorized",
        "auth:missing",
    )
    .await;
    let b = bearer(&signed);
    gw.refused(
        "two-headers",
        "/rsa/x",
        &[("authorization", &b), ("authorization", &b)],
        401,
        "invalid_request",
        "auth:invalid_request",
    )
    .await;
    gw.refused(
        "no-token",
        "/rsa/x",
        &[("authorization", "Bearer")],
        401,
        "invalid_request",
        "auth:invalid_request",
    )
    .await;
    let scoped = hmac.sign(&claims("https://hmac.idp.test", "api"), None);
    gw.refused(
        "scope",
        "/scoped/x",
        &[("authorization", &bearer(&scoped))],
        403,
        "insufficient_scope",
        "auth:insufficient_scope",
    )
    .await;
    let r = gw
        .get(
            "scope-2",
            "/scoped/x",
            &[("authorization", &bearer(&scoped))],
        )
        .await;
    let c = r.headers["www-authenticate"].to_str().unwrap();
    assert!(
        c.contains("error=\"insufficient_scope\"") && c.contains("scope=\"admin\""),
        "{c}"
    );
    // A refused request reaches no upstream.
    let before = up.served();
    let _ = gw.get("refused-again", "/rsa/x", &[]).await;
    assert_eq!(up.served(), before);
}

fn base64_url(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_over_https_rotates_keys_and_the_gateway_starts_without_it() {
    let setup = Setup::new();
    let pki = Pki::new(setup.dir.path());
    let cert = pki.issue("idp", &["localhost"]);
    let idp = Idp::start(pki.server_config(&cert, false)).await;
    let rsa = SigningKey::rsa(Algorithm::RS256);
    let ec = SigningKey::ec();
    let ed = SigningKey::ed25519();
    idp.set_jwks(vec![
        rsa.jwk_with("k1", Some("RS256")),
        // Its own alg says RS512: RS256 tokens may not use it.
        rsa.jwk_with("k5", Some("RS512")),
    ]);
    let up = Upstream::start("up").await;
    let dead = free_port();
    let rest = format!(
        r#"
[upstreams.up]
targets = ["{up}"]

[auth.providers.idp]
type = "jwt"
algorithms = ["RS256", "ES256", "EdDSA"]
jwks_url = "https://localhost:{idp}/jwks"
jwks_ca = "ca.pem"
jwks_refresh = "1h"
jwks_min_refresh = "1s"
issuer = "https://idp.test"
audiences = ["api"]

[auth.providers.down]
type = "jwt"
algorithms = ["RS256"]
jwks_url = "https://localhost:{dead}/jwks"
jwks_ca = "ca.pem"
jwks_timeout = "1s"

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "up"
auth = {{ providers = ["idp"] }}

[[routes]]
name = "down"
path_prefix = "/down"
upstream = "up"
auth = {{ providers = ["down"] }}
"#,
        up = up.addr,
        idp = idp.addr.port()
    );
    // The "down" provider's endpoint does not exist: the daemon starts anyway.
    let gw = Gateway::start(setup, &rest);
    let c = claims("https://idp.test", "api");
    let k1 = rsa.sign(&c, Some("k1"));
    let r = gw
        .get("k1", "/api/x", &[("authorization", &bearer(&k1))])
        .await;
    assert_eq!(r.status, 200, "{}\n{}", r.json, gw.daemon.log_text());
    gw.refused(
        "k5",
        "/api/x",
        &[("authorization", &bearer(&rsa.sign(&c, Some("k5"))))],
        401,
        "invalid_token",
        "auth:key_mismatch",
    )
    .await;
    // k2 is not published yet.
    let k2 = ec.sign(&c, Some("k2"));
    gw.refused(
        "k2-before",
        "/api/x",
        &[("authorization", &bearer(&k2))],
        401,
        "invalid_token",
        "auth:unknown_kid",
    )
    .await;
    // The issuer rotates: k1 is retired, k2 and k3 are published.
    idp.set_jwks(vec![
        ec.jwk_with("k2", None),
        ed.jwk_with("k3", Some("EdDSA")),
    ]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let fetches = idp.fetches();
    let r = gw
        .get("k2-after", "/api/x", &[("authorization", &bearer(&k2))])
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(
        idp.fetches(),
        fetches + 1,
        "an unknown kid fetched the set once"
    );
    let k3 = ed.sign(&c, Some("k3"));
    assert_eq!(
        gw.get("k3", "/api/x", &[("authorization", &bearer(&k3))])
            .await
            .status,
        200
    );
    // The token signed with k1 and cached before the rotation is refused too: a new set
    // invalidates what the old one verified (no fetch: k2 fetched the set under a second ago).
    gw.refused(
        "k1-cached",
        "/api/x",
        &[("authorization", &bearer(&k1))],
        401,
        "invalid_token",
        "auth:unknown_kid",
    )
    .await;
    // k1 is gone for new tokens as well, and a kid never published stays unknown; within the
    // floor, unknown kids do not fetch again.
    let k1_new = rsa.sign(
        &json!({"sub": "bob", "iss": "https://idp.test", "aud": "api", "exp": now() + 500}),
        Some("k1"),
    );
    gw.refused(
        "k1-after",
        "/api/x",
        &[("authorization", &bearer(&k1_new))],
        401,
        "invalid_token",
        "auth:unknown_kid",
    )
    .await;
    let fetches = idp.fetches();
    for i in 0..5 {
        let t = ec.sign(&c, Some(&format!("k9-{i}")));
        gw.refused(
            &format!("k9-{i}"),
            "/api/x",
            &[("authorization", &bearer(&t))],
            401,
            "invalid_token",
            "auth:unknown_kid",
        )
        .await;
    }
    assert!(idp.fetches() <= fetches + 1, "refetches are floored");
    // When the endpoint fails, the last good set is kept.
    idp.state
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t = ec.sign(&c, Some("k10"));
    gw.refused(
        "k10-down",
        "/api/x",
        &[("authorization", &bearer(&t))],
        401,
        "invalid_token",
        "auth:unknown_kid",
    )
    .await;
    let k2_new = ec.sign(
        &json!({"sub": "carol", "iss": "https://idp.test", "aud": "api", "exp": now() + 500}),
        Some("k2"),
    );
    assert_eq!(
        gw.get("k2-down", "/api/x", &[("authorization", &bearer(&k2_new))])
            .await
            .status,
        200
    );
    // A provider whose set was never fetched cannot vouch for anyone: 503, not 401.
    let t = rsa.sign(&c, Some("k1"));
    gw.refused(
        "never",
        "/down/x",
        &[("authorization", &bearer(&t))],
        503,
        "auth_unavailable",
        "auth:keys_unavailable",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_and_introspection() {
    let setup = Setup::new();
    let dir = setup.dir.path().to_path_buf();
    let pki = Pki::new(&dir);
    let cert = pki.issue("idp", &["localhost"]);
    let idp = Idp::start(pki.server_config(&cert, false)).await;
    {
        use base64::Engine as _;
        *idp.state.basic.lock().unwrap() = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("gateway:intro-secret")
        );
    }
    idp.state.tokens.lock().unwrap().extend([
        ("opaque-active".to_string(), json!({"active": true, "sub": "dave", "scope": "read", "exp": now() + 600, "client_id": "app"})),
        ("opaque-noscope".to_string(), json!({"active": true, "sub": "erin", "scope": "other", "exp": now() + 600})),
        ("opaque-expired".to_string(), json!({"active": true, "sub": "old", "exp": now() - 10})),
    ]);
    std::fs::write(dir.join("client.secret"), "intro-secret\n").unwrap();
    let hash = |k: &str| {
        use sha2::Digest as _;
        sha2::Sha256::digest(k.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    std::fs::write(
        dir.join("keys.toml"),
        format!(
            "[[keys]]\nid = \"batch\"\nsha256 = \"{}\"\nscopes = [\"read\"]\n",
            hash("file-key-456")
        ),
    )
    .unwrap();
    let up = Upstream::start("up").await;
    let rest = format!(
        r#"
[upstreams.up]
targets = ["{up}"]

[auth.providers.keys]
type = "api_key"
header = "x-api-key"
query = "api_key"
keys_file = "keys.toml"
[[auth.providers.keys.keys]]
id = "ci"
sha256 = "{ci}"
scopes = ["read", "write"]

[auth.providers.oauth]
type = "introspection"
url = "https://localhost:{idp}/introspect"
ca = "ca.pem"
client_id = "gateway"
client_secret_file = "client.secret"
timeout = "2s"

[[routes]]
name = "keys"
path_prefix = "/keys"
upstream = "up"
[routes.auth]
providers = ["keys"]
scopes = ["read"]
forward_claims = {{ sub = "x-user" }}

[[routes]]
name = "hidden"
path_prefix = "/hidden"
upstream = "up"
[routes.auth]
providers = ["keys"]
strip_api_key = true

[[routes]]
name = "oauth"
path_prefix = "/oauth"
upstream = "up"
[routes.auth]
providers = ["oauth"]
scopes = ["read"]
strip_authorization = true
forward_claims = {{ sub = "x-user", client_id = "x-client" }}
"#,
        up = up.addr,
        ci = hash("ci-key-123"),
        idp = idp.addr.port()
    );
    let gw = Gateway::start(setup, &rest);

    let r = gw
        .get(
            "key-header",
            "/keys/x",
            &[("x-api-key", "ci-key-123"), ("x-user", "root")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(seen(&r)["x-user"], "ci");
    assert_eq!(gw.audit("key-header").await["subject"], "ci");
    let r = gw
        .get("key-query", "/keys/x?api_key=file-key-456", &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(seen(&r)["x-user"], "batch");
    // Forwarded as it came, unless the route strips the key.
    let r = gw
        .get("key-kept", "/keys/x?a=1&api_key=file-key-456", &[])
        .await;
    assert_eq!(r.json["uri"], "/keys/x?a=1&api_key=file-key-456");
    let r = gw
        .get(
            "key-hidden-query",
            "/hidden/x?a=1&api_key=file-key-456&b=2",
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["uri"], "/hidden/x?a=1&b=2");
    let r = gw
        .get(
            "key-hidden-header",
            "/hidden/y",
            &[("x-api-key", "ci-key-123")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(seen(&r).get("x-api-key"), None);
    assert_eq!(gw.audit("key-hidden-header").await["subject"], "ci");
    gw.refused(
        "key-bad",
        "/keys/x",
        &[("x-api-key", "ci-key-124")],
        401,
        "invalid_token",
        "auth:bad_api_key",
    )
    .await;
    gw.refused(
        "key-bad-query",
        "/keys/x?api_key=nope",
        &[],
        401,
        "invalid_token",
        "auth:bad_api_key",
    )
    .await;
    gw.refused(
        "key-twice",
        "/keys/x?api_key=file-key-456",
        &[("x-api-key", "ci-key-123")],
        401,
        "invalid_request",
        "auth:invalid_request",
    )
    .await;
    gw.refused(
        "key-none",
        "/keys/x",
        &[],
        401,
        "unauthorized",
        "auth:missing",
    )
    .await;

    let r = gw
        .get(
            "intro-ok",
            "/oauth/x",
            &[
                ("authorization", "Bearer opaque-active"),
                ("x-client", "spoof"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(seen(&r)["x-user"], "dave");
    assert_eq!(seen(&r)["x-client"], "app");
    assert!(seen(&r).get("authorization").is_none());
    gw.refused(
        "intro-inactive",
        "/oauth/x",
        &[("authorization", "Bearer opaque-unknown")],
        401,
        "invalid_token",
        "auth:inactive",
    )
    .await;
    gw.refused(
        "intro-expired",
        "/oauth/x",
        &[("authorization", "Bearer opaque-expired")],
        401,
        "invalid_token",
        "auth:expired",
    )
    .await;
    gw.refused(
        "intro-scope",
        "/oauth/x",
        &[("authorization", "Bearer opaque-noscope")],
        403,
        "insufficient_scope",
        "auth:insufficient_scope",
    )
    .await;
    // The endpoint fails: unknown tokens get 503, never a pass; a cached answer still serves.
    idp.state
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    gw.refused(
        "intro-down",
        "/oauth/x",
        &[("authorization", "Bearer opaque-new")],
        503,
        "auth_unavailable",
        "auth:introspection_unavailable",
    )
    .await;
    let calls = idp
        .state
        .introspections
        .load(std::sync::atomic::Ordering::SeqCst);
    let r = gw
        .get(
            "intro-cached",
            "/oauth/x",
            &[("authorization", "Bearer opaque-active")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        idp.state
            .introspections
            .load(std::sync::atomic::Ordering::SeqCst),
        calls
    );
}
