//! Each refusal path of the auth phase, the config rules, and property tests of the parser.

use std::sync::OnceLock;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use hyper::Request;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-hmac";

struct Fixture {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
}

fn rsa_pems() -> &'static (String, String) {
    static KEYS: OnceLock<(String, String)> = OnceLock::new();
    KEYS.get_or_init(|| {
        use rsa::{pkcs1::EncodeRsaPrivateKey as _, pkcs8::EncodePublicKey as _};
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let private = key.to_pkcs1_pem(Default::default()).unwrap().to_string();
        let public = key
            .to_public_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        (private, public)
    })
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        std::fs::write(path.join("secret"), SECRET).unwrap();
        std::fs::write(path.join("rsa.pem"), &rsa_pems().1).unwrap();
        Fixture {
            _dir: dir,
            dir: path,
        }
    }

    fn auth(&self, toml_text: &str) -> Result<Auth, String> {
        let mut c: AuthConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        c.resolve_paths(&self.dir);
        c.validate()
            .map_err(|(k, m)| format!("{}: {m}", k.join(".")))?;
        Auth::new(&c, None)
    }
}

const PROVIDERS: &str = r#"
[providers.hs]
type = "jwt"
algorithms = ["HS256"]
secret_file = "secret"
issuer = "https://idp.test"
audiences = ["api"]

[providers.rs]
type = "jwt"
algorithms = ["RS256"]
public_key_file = "rsa.pem"

[providers.keys]
type = "api_key"
query = "api_key"
[[providers.keys.keys]]
id = "ci"
sha256 = "SHA"
scopes = ["read"]
"#;

fn providers() -> String {
    PROVIDERS.replace("SHA", &hash_key("good-key"))
}

fn route(toml_text: &str) -> RouteAuthConfig {
    toml::from_str(toml_text).unwrap()
}

fn now_secs() -> i64 {
    super::now() as i64
}

fn claims() -> Value {
    json!({"sub": "alice", "iss": "https://idp.test", "aud": "api",
           "exp": now_secs() + 600, "scope": "read write", "roles": ["admin"],
           "email": "alice@example.test"})
}

fn hs(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn rs(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(rsa_pems().0.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn unsigned(header: Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

fn parts(headers: &[(&str, &str)]) -> Parts {
    parts_uri("/", headers)
}

fn parts_uri(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn check(policy: &RoutePolicy, headers: &[(&str, &str)]) -> Result<Identity, Rejection> {
    let mut p = parts(headers);
    policy.check(&mut p).await.map(|i| i.expect("an identity"))
}

/// The rule of a refusal, after checking its status and challenge.
async fn refused(policy: &RoutePolicy, headers: &[(&str, &str)]) -> Rejection {
    let r = check(policy, headers).await.expect_err("refused");
    if r.status == StatusCode::UNAUTHORIZED {
        let h = r
            .headers
            .get(header::WWW_AUTHENTICATE)
            .expect("a challenge");
        assert!(h.to_str().unwrap().starts_with("Bearer realm=\"gateway\""));
    }
    r
}

fn policy(auth: &Auth, toml_text: &str) -> RoutePolicy {
    auth.policy(&route(toml_text)).unwrap()
}

#[tokio::test]
async fn a_valid_jwt_is_accepted_and_then_served_from_the_cache() {
    let f = Fixture::new();
    let auth = f.auth(&providers()).unwrap();
    let p = policy(&auth, "providers = [\"hs\"]");
    let token = hs(&claims());
    let id = check(&p, &[("authorization", &bearer(&token))])
        .await
        .unwrap();
    assert_eq!(id.subject, "alice");
    assert_eq!(&*id.provider, "hs");
    assert_eq!(id.scopes, ["read", "write"]);
    assert_eq!(p.jwt[0].0.cache.len(), 1);
    // The scheme is case-insensitive.
    let id = check(&p, &[("authorization", &format!("bEaReR {token}"))])
        .await
        .unwrap();
    assert_eq!(id.subject, "alice");
    let id = check(&p, &[("authorization", &bearer(&rs(&claims())))]).await;
    assert_eq!(id.unwrap_err().rule, "auth:alg_not_allowed");
}

#[tokio::test]
async fn every_token_trick_is_refused_with_its_rule() {
    let f = Fixture::new();
    let auth = f.auth(&providers()).unwrap();
    let hsp = policy(&auth, "providers = [\"hs\"]");
    let rsp = policy(&auth, "providers = [\"rs\"]");
    let now = now_secs();
    let with = |k: &str, v: Value| {
        let mut c = claims();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let good = hs(&claims());
    let (h, rest) = good.split_once('.').unwrap();
    let (payload, sig) = rest.split_once('.').unwrap();
    let mut bad_sig = sig.to_string();
    let last = if bad_sig.starts_with('A') { "B" } else { "A" };
    bad_sig.replace_range(0..1, last);
    let forged_payload = URL_SAFE_NO_PAD.encode(with("sub", json!("mallory")).to_string());
    // HS256 signed with the RSA public key (the classic key confusion).
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(rsa_pems().1.as_bytes()),
    )
    .unwrap();
    let cases: Vec<(&RoutePolicy, String, &str)> = vec![
        (
            &hsp,
            unsigned(json!({"alg": "none"}), &claims(), ""),
            "auth:alg_none",
        ),
        (
            &hsp,
            unsigned(json!({"alg": "None", "typ": "JWT"}), &claims(), ""),
            "auth:alg_none",
        ),
        (
            &hsp,
            unsigned(json!({"alg": "HS512"}), &claims(), "c2ln"),
            "auth:alg_not_allowed",
        ),
        (&rsp, confused, "auth:alg_not_allowed"),
        (&hsp, hs(&with("exp", json!(now - 120))), "auth:expired"),
        (
            &hsp,
            hs(&with("exp", json!((now + 600).to_string()))),
            "auth:bad_claim",
        ),
        (&hsp, hs(&without("exp")), "auth:missing_claim"),
        (
            &hsp,
            hs(&with("nbf", json!(now + 600))),
            "auth:not_yet_valid",
        ),
        (&hsp, hs(&with("nbf", json!("0"))), "auth:bad_claim"),
        (
            &hsp,
            hs(&with("iat", json!(now + 600))),
            "auth:issued_in_future",
        ),
        (
            &hsp,
            hs(&with("iss", json!("https://evil.test"))),
            "auth:wrong_issuer",
        ),
        (&hsp, hs(&without("iss")), "auth:wrong_issuer"),
        (
            &hsp,
            hs(&with("aud", json!("other"))),
            "auth:wrong_audience",
        ),
        (
            &hsp,
            hs(&with("aud", json!(["other", "more"]))),
            "auth:wrong_audience",
        ),
        (&hsp, hs(&without("sub")), "auth:missing_claim"),
        (&hsp, hs(&with("sub", json!(7))), "auth:missing_claim"),
        (
            &hsp,
            format!("{h}.{payload}.{bad_sig}"),
            "auth:bad_signature",
        ),
        (
            &hsp,
            format!("{h}.{forged_payload}.{sig}"),
            "auth:bad_signature",
        ),
        (&hsp, format!("{h}.{payload}.{sig}="), "auth:malformed"),
        (&hsp, format!("{h}.{payload}"), "auth:malformed"),
        (&hsp, format!("{h}.{payload}.{sig}.x"), "auth:malformed"),
        (
            &hsp,
            unsigned(json!({"alg": "HS256", "crit": ["exp"]}), &claims(), "c2ln"),
            "auth:malformed",
        ),
        (
            &hsp,
            unsigned(json!({"alg": "HS256", "typ": "JWE"}), &claims(), "c2ln"),
            "auth:malformed",
        ),
        (
            &hsp,
            unsigned(json!({"typ": "JWT"}), &claims(), "c2ln"),
            "auth:malformed",
        ),
        (
            &hsp,
            unsigned(json!({"alg": "HS256"}), &json!([1, 2]), "c2ln"),
            "auth:malformed",
        ),
    ];
    for (p, token, rule) in cases {
        let r = refused(p, &[("authorization", &bearer(&token))]).await;
        assert_eq!(r.rule, rule, "{token}");
        assert_eq!(r.code, "invalid_token");
        assert!(!r.message.contains(&token), "the token is echoed");
        let challenge = r.headers[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    }
    // A repeated header member is ambiguous.
    let dup = format!(
        "{}.{payload}.{sig}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","alg":"none"}"#)
    );
    let r = refused(&hsp, &[("authorization", &bearer(&dup))]).await;
    assert_eq!(r.rule, "auth:malformed");
    // The audience may be an array holding ours.
    assert!(check(
        &hsp,
        &[(
            "authorization",
            &bearer(&hs(&with("aud", json!(["x", "api"]))))
        )]
    )
    .await
    .is_ok());
    // Within the leeway, a just-expired token still passes.
    assert!(check(
        &hsp,
        &[("authorization", &bearer(&hs(&with("exp", json!(now - 5)))))]
    )
    .await
    .is_ok());
}

#[tokio::test]
async fn missing_and_malformed_credentials() {
    let f = Fixture::new();
    let auth = f.auth(&providers()).unwrap();
    let p = policy(&auth, "providers = [\"hs\", \"keys\"]");
    let r = refused(&p, &[]).await;
    assert_eq!(
        (r.status, r.code, r.rule.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized", "auth:missing")
    );
    assert_eq!(
        r.headers[header::WWW_AUTHENTICATE],
        "Bearer realm=\"gateway\""
    );
    let token = hs(&claims());
    for headers in [
        vec![
            ("authorization", bearer(&token)),
            ("authorization", bearer(&token)),
        ],
        vec![("authorization", "Bearer".to_string())],
        vec![("authorization", "Bearer ".to_string())],
        vec![("authorization", format!("Bearer {token} extra"))],
        vec![("authorization", "Bearer a\"b".to_string())],
        vec![("authorization", format!("Bearer {token}\u{e9}"))],
        vec![("authorization", format!("Bearer {token}\t"))],
        vec![("authorization", "Bearer ==".to_string())],
        vec![("authorization", "Basic dXNlcjpwYXNz\u{e9}".to_string())],
        vec![("authorization", "B@sic dXNlcjpwYXNz".to_string())],
        vec![
            ("authorization", bearer(&token)),
            ("x-api-key", "good-key".into()),
        ],
        vec![("x-api-key", "a".into()), ("x-api-key", "b".into())],
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = refused(&p, &h).await;
        assert_eq!(
            (r.code, r.rule.as_str()),
            ("invalid_request", "auth:invalid_request"),
            "{headers:?}"
        );
        assert!(r.headers[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_request\""));
    }
    // The scheme in any case, spaces around the token.
    let spaced = format!("bEaReR   {token}  ");
    let who = p.check(&mut parts(&[("authorization", &spaced)])).await;
    assert_eq!(who.unwrap().unwrap().subject, "alice");
    // Another scheme is not our credential: as if there were none.
    let r = refused(&p, &[("authorization", "Basic dXNlcjpwYXNz")]).await;
    assert_eq!(r.rule, "auth:missing");
    // An opaque token on a route without introspection.
    let r = refused(&p, &[("authorization", "Bearer opaque-token")]).await;
    assert_eq!(r.rule, "auth:malformed");
    // Optional: nothing is fine, a bad token is not.
    let opt = policy(&auth, "mode = \"optional\"\nproviders = [\"hs\"]");
    assert!(opt.check(&mut parts(&[])).await.unwrap().is_none());
    let bad = hs(&json!({"sub": "a", "exp": 1}));
    assert_eq!(
        refused(&opt, &[("authorization", &bearer(&bad))])
            .await
            .rule,
        "auth:expired"
    );
}

#[tokio::test]
async fn api_keys_from_header_and_query() {
    let f = Fixture::new();
    let auth = f.auth(&providers()).unwrap();
    let p = policy(&auth, "providers = [\"keys\"]\nscopes = [\"read\"]");
    let id = check(&p, &[("x-api-key", "good-key")]).await.unwrap();
    assert_eq!(
        (id.subject.as_str(), id.api_key.as_deref()),
        ("ci", Some("ci"))
    );
    let mut q = parts_uri("/x?api_key=good-key", &[]);
    assert_eq!(p.check(&mut q).await.unwrap().unwrap().subject, "ci");
    let r = refused(&p, &[("x-api-key", "good-kez")]).await;
    assert_eq!(
        (r.code, r.rule.as_str()),
        ("invalid_token", "auth:bad_api_key")
    );
    let r = refused(&p, &[("authorization", &bearer(&hs(&claims())))]).await;
    assert_eq!(r.rule, "auth:unsupported_credential");
    let p = policy(&auth, "providers = [\"keys\"]\nscopes = [\"write\"]");
    let r = check(&p, &[("x-api-key", "good-key")]).await.unwrap_err();
    assert_eq!(
        (r.status, r.code),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );
}

#[tokio::test]
async fn authorization_by_scopes_roles_subjects_groups() {
    let f = Fixture::new();
    let auth = f.auth(&providers()).unwrap();
    let token = hs(&claims());
    let h = [("authorization", bearer(&token))];
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for (rules, ok, rule) in [
        ("scopes = [\"read\", \"write\"]", true, ""),
        (
            "scopes = [\"read\", \"admin\"]",
            false,
            "auth:insufficient_scope",
        ),
        ("roles = [\"user\", \"admin\"]", true, ""),
        ("roles = [\"user\"]", false, "auth:forbidden_role"),
        ("subjects = [\"alice\"]", true, ""),
        ("subjects = [\"bob\"]", false, "auth:forbidden_subject"),
        ("groups = [\"ops\"]", false, "auth:forbidden_group"),
    ] {
        let p = policy(&auth, &format!("providers = [\"hs\"]\n{rules}"));
        match check(&p, &h).await {
            Ok(_) => assert!(ok, "{rules}"),
            Err(r) => {
                assert!(!ok, "{rules}");
                assert_eq!((r.status, r.rule.as_str()), (StatusCode::FORBIDDEN, rule));
                let c = r.headers[header::WWW_AUTHENTICATE].to_str().unwrap();
                assert!(c.contains("error=\"insufficient_scope\""), "{c}");
            }
        }
    }
    let p = policy(&auth, "providers = [\"hs\"]\nscopes = [\"admin\"]");
    let r = check(&p, &h).await.unwrap_err();
    let c = r.headers[header::WWW_AUTHENTICATE].to_str().unwrap();
    assert!(c.ends_with("scope=\"admin\""), "{c}");
}

#[tokio::test]
async fn claim_headers_are_set_and_never_spoofed() {
    let f = Fixture::new();
    let auth = f.auth(&providers()).unwrap();
    let fwd = "[forward_claims]\nsub = \"x-user\"\nemail = \"x-email\"\nroles = \"x-roles\"\nbad = \"x-bad\"";
    let mut c = claims();
    c["bad"] = json!("a\r\nInjected: yes");
    let token = hs(&c);
    let spoof = [
        ("x-user", "root"),
        ("x-email", "root@evil"),
        ("x-bad", "spoof"),
    ];
    for mode in ["off", "optional", "required"] {
        let p = policy(
            &auth,
            &format!("mode = \"{mode}\"\nproviders = [\"hs\"]\nstrip_authorization = true\n{fwd}"),
        );
        // Spoofed headers without credentials: removed.
        let mut req = parts(&spoof);
        let _ = p.check(&mut req).await;
        for (h, _) in spoof {
            assert!(req.headers.get(h).is_none(), "{mode}: {h} kept");
        }
        // With a token: set from the claims (except in mode off), Authorization stripped.
        let b = bearer(&token);
        let mut req = parts(&[spoof[0], spoof[1], spoof[2], ("authorization", &b)]);
        let id = p.check(&mut req).await.unwrap();
        assert!(req.headers.get(header::AUTHORIZATION).is_none());
        assert!(
            req.headers.get("x-bad").is_none(),
            "control characters are dropped"
        );
        if mode == "off" {
            assert!(id.is_none());
            assert!(req.headers.get("x-user").is_none());
        } else {
            assert_eq!(req.headers["x-user"], "alice");
            assert_eq!(req.headers["x-email"], "alice@example.test");
            assert_eq!(req.headers["x-roles"], "admin");
        }
        // A refused request loses them too.
        let expired = bearer(&hs(&json!({"sub": "a", "exp": 1})));
        let mut req = parts(&[spoof[0], ("authorization", &expired)]);
        let _ = p.check(&mut req).await;
        assert!(req.headers.get("x-user").is_none());
    }
}

#[tokio::test]
async fn jwks_files_select_by_kid_and_honour_key_alg() {
    let f = Fixture::new();
    let secret = URL_SAFE_NO_PAD.encode(SECRET);
    let jwks = json!({"keys": [
        {"kty": "oct", "kid": "k1", "k": secret, "alg": "HS256", "use": "sig"},
        {"kty": "oct", "kid": "k2", "k": secret, "alg": "HS512"},
    ]});
    std::fs::write(f.dir.join("jwks.json"), jwks.to_string()).unwrap();
    let auth = f
        .auth("[providers.j]\ntype = \"jwt\"\nalgorithms = [\"HS256\", \"HS512\"]\njwks_file = \"jwks.json\"\n")
        .unwrap();
    let p = policy(&auth, "providers = [\"j\"]");
    let token = |alg, kid: &str| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        encode(&h, &claims(), &EncodingKey::from_secret(SECRET)).unwrap()
    };
    assert!(check(
        &p,
        &[("authorization", &bearer(&token(Algorithm::HS256, "k1")))]
    )
    .await
    .is_ok());
    assert!(check(
        &p,
        &[("authorization", &bearer(&token(Algorithm::HS512, "k2")))]
    )
    .await
    .is_ok());
    let r = refused(
        &p,
        &[("authorization", &bearer(&token(Algorithm::HS512, "k1")))],
    )
    .await;
    assert_eq!(r.rule, "auth:key_mismatch");
    let r = refused(
        &p,
        &[("authorization", &bearer(&token(Algorithm::HS256, "k9")))],
    )
    .await;
    assert_eq!(r.rule, "auth:unknown_kid");
}

#[tokio::test]
async fn introspection_endpoint_down_is_unavailable_never_accepted() {
    let f = Fixture::new();
    let auth = f
        .auth(
            "[providers.o]\ntype = \"introspection\"\nurl = \"http://127.0.0.1:9/introspect\"\n\
             client_id = \"gw\"\nclient_secret_file = \"secret\"\ntimeout = \"2s\"\n",
        )
        .unwrap();
    let p = policy(&auth, "providers = [\"o\"]");
    let r = check(&p, &[("authorization", "Bearer opaque-abc")])
        .await
        .unwrap_err();
    assert_eq!(
        (r.status, r.code, r.rule.as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "auth_unavailable",
            "auth:introspection_unavailable"
        )
    );
}

#[test]
fn config_rules() {
    let f = Fixture::new();
    let err = |t: &str| f.auth(t).err().unwrap_or_else(|| panic!("accepted: {t}"));
    let jwt = |rest: &str| format!("[providers.p]\ntype = \"jwt\"\n{rest}\n");
    for (text, want) in [
        (jwt("secret_file = \"secret\""), "providers.p.algorithms"),
        (jwt("algorithms = [\"HS256\"]"), "one key source"),
        (jwt("algorithms = [\"HS256\"]\nsecret_file = \"secret\"\njwks_file = \"x\""), "only one key source"),
        (jwt("algorithms = [\"RS256\"]\nsecret_file = \"secret\""), "HMAC secret"),
        (jwt("algorithms = [\"HS256\"]\npublic_key_file = \"rsa.pem\""), "shared secret"),
        (jwt("algorithms = [\"none\"]\nsecret_file = \"secret\""), "unknown variant"),
        (jwt("algorithms = [\"ES256\"]\npublic_key_file = \"rsa.pem\""), "no key of its type"),
        (jwt("algorithms = [\"RS256\"]\npublic_key_file = \"missing.pem\""), "missing.pem"),
        (jwt("algorithms = [\"RS256\"]\njwks_url = \"http://idp.example/jwks\""), "loopback"),
        (jwt("algorithms = [\"HS256\"]\nsecret_file = \"secret\"\nsecrt = 1"), "unknown field"),
        (jwt("algorithms = [\"HS256\"]\nsecret_env = \"GATEWAY_TEST_UNSET_VAR\""), "not set"),
        ("[providers.p]\ntype = \"saml\"\n".into(), "unknown variant"),
        ("[providers.k]\ntype = \"api_key\"\n".into(), "needs keys"),
        ("[providers.k]\ntype = \"api_key\"\n[[providers.k.keys]]\nid = \"a\"\nsha256 = \"abc\"\n".into(), "64 hex"),
        ("[providers.o]\ntype = \"introspection\"\nurl = \"https://idp/x\"\nclient_id = \"gw\"\n".into(), "client secret"),
    ] {
        let e = err(&text);
        assert!(e.contains(want), "{text}\n-> {e}");
    }
    std::fs::write(f.dir.join("short"), "too short").unwrap();
    assert!(err(&jwt("algorithms = [\"HS256\"]\nsecret_file = \"short\"")).contains("at least 32"));
    let auth: AuthConfig = toml::from_str(&providers()).unwrap();
    for (text, want) in [
        ("providers = []", "providers"),
        ("providers = [\"nope\"]", "not a provider"),
        ("providers = [\"hs\", \"hs\"]", "twice"),
        (
            "providers = [\"hs\"]\n[forward_claims]\nsub = \"host\"",
            "manages",
        ),
        (
            "providers = [\"hs\"]\n[forward_claims]\nsub = \"bad header\"",
            "not a header",
        ),
        ("providers = [\"hs\"]\nscopes = [\"\"]", "scope"),
    ] {
        let (_, m) = route(text).validate(&auth).unwrap_err();
        assert!(m.contains(want), "{text}\n-> {m}");
    }
    assert!(route("mode = \"off\"").validate(&auth).is_ok());
    assert!(toml::from_str::<RouteAuthConfig>("mode = \"on\"").is_err());
    assert!(toml::from_str::<RouteAuthConfig>("scope = []").is_err());
}

#[test]
fn reload_keeps_the_cache_only_when_nothing_changed() {
    let f = Fixture::new();
    let text = providers();
    let a = f.auth(&text).unwrap();
    let mut c: AuthConfig = toml::from_str(&text).unwrap();
    c.resolve_paths(&f.dir);
    let b = Auth::new(&c, Some(&a)).unwrap();
    let cache = |x: &Auth| match &x.providers["hs"].0 {
        Provider::Jwt(j) => j.cache.clone(),
        _ => unreachable!(),
    };
    assert!(Arc::ptr_eq(&cache(&a), &cache(&b)));
    std::fs::write(
        f.dir.join("secret"),
        b"another secret, also 32 bytes long!!",
    )
    .unwrap();
    let d = Auth::new(&c, Some(&b)).unwrap();
    assert!(!Arc::ptr_eq(&cache(&b), &cache(&d)));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn fixture_policy() -> &'static (Fixture, Auth) {
    static F: OnceLock<(Fixture, Auth)> = OnceLock::new();
    F.get_or_init(|| {
        let f = Fixture::new();
        let a = f.auth(&providers()).unwrap();
        (f, a)
    })
}

fn valid_token() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    T.get_or_init(|| {
        let mut c = claims();
        c["exp"] = json!(now_secs() + 86400);
        hs(&c)
    })
}

const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_strings_never_panic_nor_pass(s in "\\PC{0,300}", t in "[A-Za-z0-9._~+/=-]{0,300}") {
        let (_, auth) = fixture_policy();
        let p = auth.policy(&route("providers = [\"hs\", \"rs\"]")).unwrap();
        let _ = jwt::parse(&s);
        let rt = runtime();
        for candidate in [s.as_str(), t.as_str()] {
            let Ok(v) = HeaderValue::from_str(&format!("Bearer {candidate}")) else { continue };
            let mut req = parts(&[]);
            req.headers.insert(header::AUTHORIZATION, v);
            prop_assert!(rt.block_on(p.check(&mut req)).is_err());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_nor_pass(b in proptest::collection::vec(any::<u8>(), 0..400)) {
        let (_, auth) = fixture_policy();
        let p = auth.policy(&route("providers = [\"hs\", \"keys\"]")).unwrap();
        let rt = runtime();
        if let Ok(v) = HeaderValue::from_bytes(&b) {
            let mut req = parts(&[]);
            req.headers.insert(header::AUTHORIZATION, v.clone());
            prop_assert!(rt.block_on(p.check(&mut req)).is_err());
            let mut req = parts(&[]);
            req.headers.insert("x-api-key", v);
            prop_assert!(rt.block_on(p.check(&mut req)).is_err());
        }
        if let Ok(s) = std::str::from_utf8(&b) {
            let _ = jwt::parse(s);
        }
    }

    #[test]
    fn mutated_valid_tokens_are_refused(pos in 0usize..10_000, c in 0usize..64, cut in any::<bool>()) {
        let (_, auth) = fixture_policy();
        let p = auth.policy(&route("providers = [\"hs\"]")).unwrap();
        let token = valid_token();
        let i = pos % token.len();
        let mut bytes = token.as_bytes().to_vec();
        if cut {
            bytes.remove(i);
        } else {
            let new = B64URL[c];
            prop_assume!(bytes[i] != new);
            bytes[i] = new;
        }
        let mutated = String::from_utf8(bytes).unwrap();
        let mut req = parts(&[("authorization", &bearer(&mutated))]);
        let rt = runtime();
        prop_assert!(rt.block_on(p.check(&mut req)).is_err(), "{}", mutated);
    }
}

#[test]
fn the_valid_token_of_the_properties_passes() {
    let (_, auth) = fixture_policy();
    let p = auth.policy(&route("providers = [\"hs\"]")).unwrap();
    let mut req = parts(&[("authorization", &bearer(valid_token()))]);
    assert!(runtime().block_on(p.check(&mut req)).unwrap().is_some());
}

#[test]
fn token68_is_exactly_the_rfc_alphabet() {
    for b in 0..=255u8 {
        let expected = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
        assert_eq!(super::is_token68(&[b]), expected, "byte {b:#x}");
        // And anywhere in a long token (the check works on 32 bytes at once, then the rest).
        for at in [0, 37, 98] {
            let mut long = vec![b'a'; 100];
            long[at] = b;
            assert_eq!(
                super::is_token68(&long),
                expected,
                "byte {b:#x} at {at} of a long token"
            );
        }
    }
    assert_eq!(super::trim_byte(b"  a b  ", b' ', true), b"a b");
    assert_eq!(super::trim_byte(b"ab==", b'=', false), b"ab");
    assert_eq!(super::trim_byte(b"==ab", b'=', false), b"==ab");
    assert_eq!(super::trim_byte(b"   ", b' ', true), b"");
}
