//! API keys, stored as SHA-256 digests and never in clear.
//!
//! The presented key is hashed first and the digest looked up, so the time taken does not
//! depend on how much of a stored key the presented one matches.

use std::{collections::HashMap, sync::Arc};

use hyper::{header::HeaderName, http::request::Parts};
use serde_json::{Map, Value};

use super::{
    cache::{digest, Digest},
    config::{check_keys, ApiKeyConfig, ApiKeyEntry, ApiKeysFile},
    Verified,
};

/// Longest key looked at.
pub const MAX_KEY_BYTES: usize = 512;

/// 64 hex digits to a digest.
pub fn parse_digest(hex: &str) -> Option<Digest> {
    let b = hex.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// The SHA-256 of a key, in hex: what the config stores.
pub fn hash_key(key: &str) -> String {
    digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub struct ApiKeyProvider {
    pub name: Arc<str>,
    pub header: HeaderName,
    pub query: Option<String>,
    keys: HashMap<Digest, Arc<Verified>>,
}

/// Where a provider found a key, or why the request is malformed.
pub enum Presented {
    None,
    Key(Vec<u8>),
    /// The key is sent twice, or is not visible ASCII.
    Malformed(&'static str),
}

impl ApiKeyProvider {
    pub fn new(name: &str, config: &ApiKeyConfig) -> Result<ApiKeyProvider, String> {
        let mut entries: Vec<ApiKeyEntry> = config.keys.clone();
        if let Some(path) = &config.keys_file {
            let name = path.display();
            let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
            let file: ApiKeysFile =
                toml::from_str(&text).map_err(|e| format!("{name}: {}", e.message()))?;
            check_keys(&file.keys).map_err(|(i, k, m)| format!("{name}: keys[{i}].{k}: {m}"))?;
            entries.extend(file.keys);
        }
        check_keys(&entries).map_err(|(i, k, m)| {
            format!(
                "keys and keys_file together: key {} ({k}): {m}",
                entries[i].id
            )
        })?;
        let keys = entries
            .into_iter()
            .map(|e| {
                let d = parse_digest(&e.sha256).expect("checked above");
                (d, Arc::new(verified(e)))
            })
            .collect();
        Ok(ApiKeyProvider {
            name: name.into(),
            header: HeaderName::from_bytes(config.header.as_bytes())
                .map_err(|_| format!("`{}` is not a header name", config.header))?,
            query: config.query.clone(),
            keys,
        })
    }

    /// The key this provider would read from the request, if any.
    pub fn presented(&self, parts: &Parts) -> Presented {
        let mut values = parts.headers.get_all(&self.header).iter();
        let header = values.next();
        if values.next().is_some() {
            return Presented::Malformed("the API key header is sent more than once");
        }
        let from_query = self.query.as_deref().map(|q| query_param(parts, q));
        let found = match (header, from_query) {
            (Some(_), Some(QueryParam::One(_) | QueryParam::Many)) => {
                return Presented::Malformed("the API key is sent both in a header and the query")
            }
            (_, Some(QueryParam::Many)) => {
                return Presented::Malformed("the API key parameter is sent more than once")
            }
            (Some(h), _) => h.as_bytes().to_vec(),
            (None, Some(QueryParam::One(v))) => v,
            (None, _) => return Presented::None,
        };
        if found.is_empty()
            || found.len() > MAX_KEY_BYTES
            || !found.iter().all(|b| b.is_ascii_graphic())
        {
            return Presented::Malformed("the API key is empty, too long or not visible ASCII");
        }
        Presented::Key(found)
    }

    /// Removes the key's header and query parameter from the request.
    pub fn strip(&self, parts: &mut Parts) {
        parts.headers.remove(&self.header);
        let (Some(name), Some(query)) = (self.query.as_deref(), parts.uri.query()) else {
            return;
        };
        let (gone, kept): (Vec<&str>, Vec<&str>) =
            query.split('&').partition(|pair| param_is(pair, name));
        if gone.is_empty() {
            return;
        }
        let path = parts.uri.path();
        let target = if kept.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", kept.join("&"))
        };
        let mut uri = parts.uri.clone().into_parts();
        // What is left of a valid target is valid; should it not be, drop the whole query
        // rather than forward the key.
        uri.path_and_query = target
            .parse()
            .or_else(|_| path.parse())
            .ok()
            .or(uri.path_and_query);
        if let Ok(u) = hyper::Uri::from_parts(uri) {
            parts.uri = u;
        }
    }

    /// The key's identity, when it is one of ours.
    pub fn lookup(&self, presented: &[u8]) -> Option<Arc<Verified>> {
        self.keys.get(&digest(presented)).cloned()
    }
}

fn verified(e: ApiKeyEntry) -> Verified {
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::String(e.id.clone()));
    claims.insert("api_key".into(), Value::String(e.id.clone()));
    claims.insert("scope".into(), Value::String(e.scopes.join(" ")));
    claims.insert(
        "roles".into(),
        Value::Array(e.roles.iter().cloned().map(Value::String).collect()),
    );
    claims.insert(
        "groups".into(),
        Value::Array(e.groups.iter().cloned().map(Value::String).collect()),
    );
    Verified {
        subject: e.id.clone(),
        api_key: Some(e.id),
        scopes: e.scopes,
        roles: e.roles,
        groups: e.groups,
        claims,
        expires: None,
    }
}

enum QueryParam {
    Absent,
    One(Vec<u8>),
    Many,
}

/// Whether `pair` (`NAME=VALUE` or `NAME`) is parameter `name`, once percent-decoded.
fn param_is(pair: &str, name: &str) -> bool {
    let k = pair.split_once('=').map_or(pair, |(k, _)| k);
    percent_encoding::percent_decode_str(k).eq(name.bytes())
}

/// The (percent-decoded) value of query parameter `name`.
fn query_param(parts: &Parts, name: &str) -> QueryParam {
    let Some(query) = parts.uri.query() else {
        return QueryParam::Absent;
    };
    let mut found = QueryParam::Absent;
    for pair in query.split('&') {
        if !param_is(pair, name) {
            continue;
        }
        let v = pair.split_once('=').map_or("", |(_, v)| v);
        if !matches!(found, QueryParam::Absent) {
            return QueryParam::Many;
        }
        let v = v.replace('+', " ");
        found = QueryParam::One(percent_encoding::percent_decode_str(&v).collect());
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Request;

    fn provider() -> ApiKeyProvider {
        ApiKeyProvider::new(
            "keys",
            &ApiKeyConfig {
                query: Some("api_key".into()),
                keys: vec![ApiKeyEntry {
                    id: "ci".into(),
                    sha256: hash_key("s3cret-key"),
                    scopes: vec!["read".into()],
                    roles: vec![],
                    groups: vec![],
                }],
                ..ApiKeyConfig::default()
            },
        )
        .unwrap()
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn digests_parse_and_hash() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(parse_digest(&hash_key("abc")).is_some());
        assert!(parse_digest("zz").is_none());
        assert!(parse_digest(&"g".repeat(64)).is_none());
    }

    #[test]
    fn keys_from_header_and_query() {
        let p = provider();
        let key = |parts: &Parts| match p.presented(parts) {
            Presented::Key(k) => Some(k),
            _ => None,
        };
        let k = key(&parts("/", &[("x-api-key", "s3cret-key")])).unwrap();
        assert_eq!(p.lookup(&k).unwrap().subject, "ci");
        let k = key(&parts("/x?a=1&api_key=s3cret%2Dkey", &[])).unwrap();
        assert_eq!(p.lookup(&k).unwrap().api_key.as_deref(), Some("ci"));
        let k = key(&parts("/", &[("x-api-key", "wrong")])).unwrap();
        assert!(p.lookup(&k).is_none());
        assert!(matches!(p.presented(&parts("/", &[])), Presented::None));
        for bad in [
            parts("/?api_key=a&api_key=b", &[]),
            parts("/?api_key=a", &[("x-api-key", "b")]),
            parts("/", &[("x-api-key", "a"), ("x-api-key", "b")]),
            parts("/?api_key=", &[]),
            parts("/?api_key=a%20b", &[]),
        ] {
            assert!(matches!(p.presented(&bad), Presented::Malformed(_)));
        }
    }

    #[test]
    fn strip_removes_the_header_and_only_the_key_parameter() {
        let p = provider();
        let stripped = |uri: &str, headers: &[(&str, &str)]| {
            let mut parts = parts(uri, headers);
            p.strip(&mut parts);
            (
                parts.uri.to_string(),
                parts.headers.contains_key("x-api-key"),
            )
        };
        assert_eq!(
            stripped("/x?a=1&api_key=k&b=2", &[("x-api-key", "k")]),
            ("/x?a=1&b=2".to_string(), false)
        );
        // Percent-encoded names are the same parameter; the last one leaves no `?`.
        assert_eq!(stripped("/x?api%5Fkey=k", &[]), ("/x".to_string(), false));
        assert_eq!(stripped("/x?api_key", &[]), ("/x".to_string(), false));
        // Look-alikes stay, byte for byte.
        assert_eq!(
            stripped("/x?api_keys=1&xapi_key=2&q=a%26b", &[]),
            ("/x?api_keys=1&xapi_key=2&q=a%26b".to_string(), false)
        );
        assert_eq!(
            stripped("http://h:8/x?api_key=k&z", &[]),
            ("http://h:8/x?z".to_string(), false)
        );
    }

    #[test]
    fn keys_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("keys.toml");
        std::fs::write(
            &f,
            format!(
                "[[keys]]\nid = \"a\"\nsha256 = \"{}\"\nscopes = [\"x\"]\n",
                hash_key("k1")
            ),
        )
        .unwrap();
        let mut c = ApiKeyConfig {
            keys_file: Some(f.clone()),
            ..ApiKeyConfig::default()
        };
        let p = ApiKeyProvider::new("keys", &c).unwrap();
        assert_eq!(p.lookup(b"k1").unwrap().scopes, ["x"]);
        std::fs::write(&f, "[[keys]]\nid = \"a\"\nsha256 = \"nothex\"\n").unwrap();
        let e = ApiKeyProvider::new("keys", &c).err().unwrap();
        assert!(e.contains("keys[0].sha256"), "{e}");
        std::fs::write(&f, "[[keys]]\nid = \"a\"\nsha = \"x\"\n").unwrap();
        assert!(ApiKeyProvider::new("keys", &c).is_err());
        c.keys_file = Some(dir.path().join("missing.toml"));
        assert!(ApiKeyProvider::new("keys", &c).is_err());
    }
}
