//! The demo's copy of `examples/gateway.toml`: the example as it is, with the few values that
//! depend on this machine and this run set line by line (so its comments stay), and what the
//! demo's story needs to know about it read from the file rather than assumed.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{bail, ensure, Context as _, Result};
use toml::{Table, Value};

/// What the story relies on in the example. Each is read from the file, so an edit of the
/// example either carries over into the demo or stops it with an error that names the key.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text: String,
    /// The port of `proxy.listen[0]`.
    pub proxy_port: u16,
    /// `admin.metrics_listen`.
    pub metrics: SocketAddr,
    /// `upstreams.api.targets`: the port and weight of each target.
    pub targets: Vec<Target>,
    /// The JWT provider `corp`: issuer, first audience and the public key file (relative).
    pub issuer: String,
    pub audience: String,
    pub jwt_key_file: PathBuf,
    /// The API-key provider `partners`: header and keys file (relative).
    pub api_key_header: String,
    pub api_keys_file: PathBuf,
    /// The route `orders`: host, path prefix and the scopes it requires.
    pub host: String,
    pub path_prefix: String,
    pub scopes: Vec<String>,
    /// The auto-ban rule `bad-credentials`.
    pub ban_threshold: u64,
    pub ban_window: String,
    pub ban_ttl: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub port: u16,
    pub weight: u64,
}

/// The upstream pool, the JWT and API-key providers, the route and the auto-ban rule the story
/// uses, by the names the example gives them.
pub const UPSTREAM: &str = "api";
pub const JWT_PROVIDER: &str = "corp";
pub const API_KEY_PROVIDER: &str = "partners";
pub const ROUTE: &str = "orders";
pub const BAN_RULE: &str = "bad-credentials";

impl Example {
    pub fn parse(text: &str) -> Result<Example> {
        let doc: Table = text.parse().context("parsing the example")?;
        let get = |path: &str| -> Result<&Value> {
            let mut value: Option<&Value> = None;
            for part in path.split('.') {
                let table = match value {
                    None => Some(&doc),
                    Some(v) => v.as_table(),
                };
                value = table.and_then(|t| t.get(part));
                if value.is_none() {
                    bail!("the example has no {path}, which the demo uses");
                }
            }
            Ok(value.expect("a path has at least one part"))
        };
        let string = |path: &str| -> Result<String> {
            get(path)?
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("{path}: not a string"))
        };
        let relative = |path: &str| -> Result<PathBuf> {
            let p = PathBuf::from(string(path)?);
            ensure!(
                p.is_relative() && !p.components().any(|c| c.as_os_str() == ".."),
                "{path}: the demo makes this file next to its copy of the example, so it must be \
                 a relative path below it"
            );
            Ok(p)
        };

        let listen = get("proxy.listen")?
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .context("proxy.listen: the demo needs a plain HTTP listener")?;
        let proxy_port = listen
            .parse::<SocketAddr>()
            .with_context(|| format!("proxy.listen: {listen:?}"))?
            .port();
        let metrics = string("admin.metrics_listen")?
            .parse()
            .context("admin.metrics_listen")?;

        let key = format!("upstreams.{UPSTREAM}.targets");
        let mut targets = Vec::new();
        for t in get(&key)?.as_array().with_context(|| key.clone())? {
            let (address, weight) = match t {
                Value::String(a) => (a.as_str(), 1),
                Value::Table(t) => (
                    t.get("address").and_then(Value::as_str).unwrap_or(""),
                    t.get("weight")
                        .and_then(Value::as_integer)
                        .map_or(1, |w| w as u64),
                ),
                _ => bail!("{key}: {t}"),
            };
            let port = address
                .parse::<SocketAddr>()
                .with_context(|| format!("{key}: {address:?}"))?
                .port();
            targets.push(Target { port, weight });
        }
        ensure!(
            targets.len() == 2,
            "{key}: the demo starts two upstream services, the example names {}",
            targets.len()
        );

        let jwt = format!("auth.providers.{JWT_PROVIDER}");
        ensure!(
            string(&format!("{jwt}.type"))? == "jwt"
                && get(&format!("{jwt}.algorithms"))?
                    .as_array()
                    .is_some_and(|a| a.iter().any(|v| v.as_str() == Some("RS256"))),
            "{jwt}: the demo signs RS256 tokens for a jwt provider that accepts them"
        );
        let audience = get(&format!("{jwt}.audiences"))?
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .with_context(|| format!("{jwt}.audiences: empty"))?
            .to_owned();
        let api = format!("auth.providers.{API_KEY_PROVIDER}");
        ensure!(
            string(&format!("{api}.type"))? == "api_key",
            "{api}: not an api_key provider"
        );

        let route = get("routes")?
            .as_array()
            .context("routes: not an array of tables")?
            .iter()
            .find(|r| r.get("name").and_then(Value::as_str) == Some(ROUTE))
            .with_context(|| format!("the example has no route named {ROUTE}"))?;
        let route_string = |key: &str| -> Result<String> {
            route
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("route {ROUTE}: no {key}"))
        };
        let scopes = route
            .get("auth")
            .and_then(|a| a.get("scopes"))
            .and_then(Value::as_array)
            .with_context(|| format!("route {ROUTE}: no auth.scopes"))?
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();

        let rule = format!("autoban.rules.{BAN_RULE}");
        let ban_threshold = get(&format!("{rule}.threshold"))?
            .as_integer()
            .with_context(|| format!("{rule}.threshold: not a number"))?
            as u64;

        Ok(Example {
            text: text.to_owned(),
            proxy_port,
            metrics,
            targets,
            issuer: string(&format!("{jwt}.issuer"))?,
            audience,
            jwt_key_file: relative(&format!("{jwt}.public_key_file"))?,
            api_key_header: get(&format!("{api}.header"))
                .ok()
                .and_then(Value::as_str)
                .unwrap_or("x-api-key")
                .to_owned(),
            api_keys_file: relative(&format!("{api}.keys_file"))?,
            host: route_string("host")?,
            path_prefix: route_string("path_prefix")?,
            scopes,
            ban_threshold,
            ban_window: string(&format!("{rule}.window"))?,
            ban_ttl: string(&format!("{rule}.ttl"))?,
        })
    }
}

/// One value the demo sets in its copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub table: String,
    pub key: &'static str,
    /// TOML, as it goes into the file.
    pub value: String,
    /// Why, for the demo's output.
    pub why: &'static str,
}

/// `upstreams.NAME.targets` as TOML, with `targets` at `host` (weights as the example has them).
pub fn targets_value(host: &str, targets: &[Target]) -> String {
    let items: Vec<String> = targets
        .iter()
        .map(|t| match t.weight {
            1 => format!("\"{host}:{}\"", t.port),
            w => format!("{{ address = \"{host}:{}\", weight = {w} }}", t.port),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// The example with `overrides` applied.
pub fn machine_copy(example: &str, overrides: &[Override]) -> Result<String> {
    let mut text = example.to_owned();
    for o in overrides {
        text = set_key(&text, &o.table, o.key, &o.value)
            .with_context(|| format!("setting {}.{}", o.table, o.key))?;
    }
    Ok(text)
}

/// `text` with `key = value` in `[table]`: the line that sets `key` there is replaced (its
/// comment goes with it), or, when the table does not set it, the line is added under the
/// table's header. The table must appear once as `[table]`, and the old value must fit on its
/// line.
pub fn set_key(text: &str, table: &str, key: &str, value: &str) -> Result<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let new = format!("{key} = {value}");
    match find_key(text, table, key)? {
        Found::Key(i) => {
            let old = strip_comment(lines[i].split_once('=').expect("a key line").1);
            let opens = old.matches(['[', '{']).count();
            let closes = old.matches([']', '}']).count();
            ensure!(
                opens == closes && !old.contains("\"\"\"") && !old.contains("'''"),
                "[{table}] {key}: the value continues on the next line; the demo only \
                 replaces one-line values"
            );
            lines[i] = new;
        }
        Found::Header(i) => lines.insert(i + 1, new),
    }
    let mut out = lines.join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

enum Found {
    /// The line index of `key = ...` in the table.
    Key(usize),
    /// The table's header line, which does not set the key.
    Header(usize),
}

fn find_key(text: &str, table: &str, key: &str) -> Result<Found> {
    let mut header = None;
    let mut found = None;
    let mut current: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            let name = strip_comment(trimmed).trim();
            current = name
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .filter(|n| !n.starts_with('['))
                .map(|n| n.trim().to_owned());
            if current.as_deref() == Some(table) {
                ensure!(header.is_none(), "[{table}] appears twice");
                header = Some(i);
            }
            continue;
        }
        if current.as_deref() != Some(table) || trimmed.starts_with('#') {
            continue;
        }
        if let Some((k, _)) = trimmed.split_once('=') {
            if k.trim() == key {
                found = Some(i);
            }
        }
    }
    match (found, header) {
        (Some(i), _) => Ok(Found::Key(i)),
        (None, Some(i)) => Ok(Found::Header(i)),
        (None, None) => bail!("the example has no [{table}] table"),
    }
}

/// `s` up to a `#` that is not inside a string.
fn strip_comment(s: &str) -> &str {
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some('"'), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(q), c) if c == q && !escaped => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') => return &s[..i],
            _ => {}
        }
        escaped = false;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# top
[xdp]
enabled = true
interface = \"eth0\"   # the interface
pin = true

[xdp.ratelimit]
pps = 20000

[upstreams.api]
targets = [\"127.0.0.1:9001\", { address = \"127.0.0.1:9002\", weight = 2 }]
multi = [
  1,
]

[[routes]]
name = \"a\"
[state]
dir = \"/var/lib/gateway\" # where # it lives
";

    #[test]
    fn replaces_a_key_in_its_table_only() {
        let out = set_key(TEXT, "xdp", "interface", "\"gwd1g\"").unwrap();
        assert!(
            out.contains("\ninterface = \"gwd1g\"\npin = true\n"),
            "{out}"
        );
        assert_eq!(out.lines().count(), TEXT.lines().count());
        assert!(out.ends_with('\n'));
        let out = set_key(TEXT, "xdp.ratelimit", "pps", "10").unwrap();
        assert!(out.contains("[xdp.ratelimit]\npps = 10\n"), "{out}");
        assert!(out.contains("enabled = true"));
        let out = set_key(TEXT, "state", "dir", "\"/tmp/x\"").unwrap();
        assert!(out.ends_with("[state]\ndir = \"/tmp/x\"\n"), "{out}");
    }

    #[test]
    fn adds_a_key_the_table_does_not_set() {
        let out = set_key(TEXT, "xdp.ratelimit", "burst", "5").unwrap();
        assert!(
            out.contains("[xdp.ratelimit]\nburst = 5\npps = 20000\n"),
            "{out}"
        );
        // Not in a subtable's or another table's lines.
        let out = set_key(TEXT, "xdp", "burst", "5").unwrap();
        assert!(out.contains("[xdp]\nburst = 5\nenabled"), "{out}");
    }

    #[test]
    fn refuses_what_it_cannot_do_faithfully() {
        let e = set_key(TEXT, "nope", "x", "1").unwrap_err();
        assert!(e.to_string().contains("no [nope] table"), "{e}");
        let e = set_key(TEXT, "upstreams.api", "multi", "[]").unwrap_err();
        assert!(e.to_string().contains("next line"), "{e}");
        // An array of tables is not `[routes]`.
        assert!(set_key(TEXT, "routes", "name", "\"b\"").is_err());
        let twice = format!("{TEXT}[xdp]\n");
        assert!(set_key(&twice, "xdp", "pin", "false").is_err());
    }

    fn example() -> String {
        let path = crate::util::workspace_root().join("examples/gateway.toml");
        std::fs::read_to_string(path).unwrap()
    }

    /// What the demo's story relies on is in the example; a change there fails here first.
    #[test]
    fn the_example_has_what_the_story_needs() {
        let e = Example::parse(&example()).unwrap();
        assert_eq!(e.proxy_port, 8080);
        assert_eq!(e.metrics, "127.0.0.1:9901".parse().unwrap());
        assert_eq!(
            e.targets,
            [
                Target {
                    port: 9001,
                    weight: 1
                },
                Target {
                    port: 9002,
                    weight: 2
                }
            ]
        );
        assert_eq!(e.jwt_key_file, PathBuf::from("keys/idp.pem"));
        assert_eq!(e.api_keys_file, PathBuf::from("keys/partners.toml"));
        assert_eq!(e.api_key_header, "x-api-key");
        assert_eq!(
            (e.host.as_str(), e.path_prefix.as_str()),
            ("api.example.com", "/v1/orders")
        );
        assert_eq!(e.scopes, ["orders:read"]);
        assert_eq!(e.ban_threshold, 20);
    }

    #[test]
    fn the_machine_copy_of_the_example_parses_with_the_overrides() {
        let text = example();
        let overrides = [
            ("xdp", "interface", "\"gwd7g\""),
            ("xdp", "pin", "false"),
            ("state", "dir", "\"/tmp/gwdemo-7/state\""),
            ("admin", "socket", "\"/tmp/gwdemo-7/admin.sock\""),
        ]
        .map(|(table, key, value)| Override {
            table: table.into(),
            key,
            value: value.into(),
            why: "",
        });
        let mut overrides = overrides.to_vec();
        let e = Example::parse(&text).unwrap();
        overrides.push(Override {
            table: "upstreams.api".into(),
            key: "targets",
            value: targets_value("198.18.1.2", &e.targets),
            why: "",
        });
        let copy = machine_copy(&text, &overrides).unwrap();
        assert!(
            copy.contains(
                "\ntargets = [\"198.18.1.2:9001\", { address = \"198.18.1.2:9002\", weight = 2 }]\n"
            ),
            "{copy}"
        );
        let doc: Table = copy.parse().unwrap();
        assert_eq!(doc["xdp"]["interface"].as_str(), Some("gwd7g"));
        assert_eq!(doc["xdp"]["pin"].as_bool(), Some(false));
        assert_eq!(
            doc["admin"]["socket"].as_str(),
            Some("/tmp/gwdemo-7/admin.sock")
        );
        assert_eq!(
            doc["admin"]["metrics_listen"].as_str(),
            Some("127.0.0.1:9901")
        );
        // Only the overridden lines differ.
        let changed = text
            .lines()
            .zip(copy.lines())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(changed, overrides.len());
        assert_eq!(text.lines().count(), copy.lines().count());
        assert_eq!(Example::parse(&copy).unwrap().ban_threshold, 20);
    }
}
