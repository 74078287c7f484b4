//! Rate limits in the proxy: GCRA (the generic cell rate algorithm, a token bucket kept as one
//! timestamp per key) over a bounded table.
//!
//! A limit allows `limit` requests per `per` on average, and up to `burst` at once. Per key it
//! stores only the theoretical arrival time (TAT) of the next request; a request is allowed
//! when, after adding one emission interval (`per / limit`), the TAT is no more than
//! `burst` intervals ahead of now.
//!
//! Keys are hashed with a per-process random key, so the table holds two `u64`s per key
//! whatever the key's length, and a client cannot aim at one shard. The table is bounded:
//! when a shard is full, keys whose bucket is full again (TAT in the past) go first, since
//! forgetting them changes nothing; if that is not enough, arbitrary keys go, which at worst
//! gives those clients a fresh bucket. Memory stays bounded when keys explode (random header
//! values, spoofed sources).

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper::{
    header::{HeaderName, HeaderValue},
    http::request::Parts,
    StatusCode,
};
use serde::Deserialize;

use super::{auth::Identity, reject::Rejection};

const SHARDS: usize = 16;
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// `[[routes.rate_limits]]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Name in headers, metrics and the audit log; default `rate_limits[INDEX]`.
    #[serde(default)]
    pub name: Option<String>,
    /// What is counted: `client_ip`, `subject`, `api_key`, `route` or `header:NAME`.
    pub key: String,
    /// Requests allowed per `per`.
    pub limit: u32,
    /// The window, e.g. `"1m"`.
    #[serde(deserialize_with = "crate::config::duration")]
    pub per: Duration,
    /// Requests allowed at once; default: `limit`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Most keys remembered at once.
    #[serde(default = "default_max_keys")]
    pub max_keys: u32,
}

fn default_max_keys() -> u32 {
    100_000
}

impl RateLimitConfig {
    /// On error: the key below `routes[i].rate_limits[j]` and what is wrong.
    pub fn validate(&self) -> Result<(), (Vec<String>, String)> {
        let err = |k: &str, m: String| Err((vec![k.to_string()], m));
        if let Some(name) = &self.name {
            // It goes into RateLimit headers as a structured-field string (RFC 8941).
            let fits = (1..=128).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\');
            if !fits {
                return err(
                    "name",
                    "must be 1 to 128 printable ASCII characters without `\"` or `\\`".into(),
                );
            }
        }
        if let Err(m) = Key::parse(&self.key) {
            return err("key", m);
        }
        if self.limit == 0 {
            return err("limit", "must be at least 1".into());
        }
        if self.per.is_zero() || self.per > Duration::from_secs(366 * 86400) {
            return err("per", "must be above zero and at most a year".into());
        }
        if self.burst == Some(0) {
            return err("burst", "must be at least 1".into());
        }
        if !(SHARDS as u32..=100_000_000).contains(&self.max_keys) {
            return err(
                "max_keys",
                format!("{} is not in {SHARDS}..=100000000", self.max_keys),
            );
        }
        Ok(())
    }
}

/// What a limit counts by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    ClientIp,
    /// The authenticated subject; requests without one are not counted by this limit.
    Subject,
    /// The API key's id; requests without one are not counted.
    ApiKey,
    /// One bucket for the whole route.
    Route,
    /// A request header's value; requests without it are not counted.
    Header(HeaderName),
}

impl Key {
    pub fn parse(s: &str) -> Result<Key, String> {
        Ok(match s {
            "client_ip" => Key::ClientIp,
            "subject" => Key::Subject,
            "api_key" => Key::ApiKey,
            "route" => Key::Route,
            _ => match s.strip_prefix("header:") {
                Some(name) => Key::Header(
                    HeaderName::from_bytes(name.trim().as_bytes())
                        .map_err(|_| format!("`{name}` is not a header name"))?,
                ),
                None => {
                    return Err(format!(
                        "`{s}` is not one of client_ip, subject, api_key, route, header:NAME"
                    ))
                }
            },
        })
    }

    /// Whether the key is only known after authentication.
    pub fn needs_identity(&self) -> bool {
        matches!(self, Key::Subject | Key::ApiKey)
    }
}

/// One limit of a route.
pub struct Limit {
    pub name: Arc<str>,
    pub key: Key,
    /// `per / limit`, in nanoseconds.
    interval: u64,
    /// `burst * interval`: how far ahead of now the TAT may run.
    tolerance: u64,
    table: Table,
    rejected: prometheus::IntCounter,
    /// `"NAME";q=LIMIT;w=SECONDS`, this limit's item of RateLimit-Policy.
    policy: HeaderValue,
}

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests left in the bucket now.
    pub remaining: u64,
    /// Time until the bucket is full again.
    pub reset: Duration,
    /// When refused: time until one request would be allowed.
    pub retry_after: Duration,
}

impl Limit {
    pub fn new(route: &str, index: usize, c: &RateLimitConfig) -> Limit {
        let name: Arc<str> = match &c.name {
            Some(n) => n.as_str().into(),
            None => format!("rate_limits[{index}]").into(),
        };
        let interval = (c.per.as_nanos() / u128::from(c.limit)).max(1) as u64;
        let burst = u64::from(c.burst.unwrap_or(c.limit));
        let policy = format!("\"{}\";q={};w={}", name, c.limit, c.per.as_secs().max(1));
        // Names are validated printable ASCII, so this never falls back.
        let policy = HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static(""));
        Limit {
            policy,
            rejected: crate::metrics::METRICS
                .rate_limited
                .with_label_values(&[route, &name]),
            name,
            key: Key::parse(&c.key).expect("validated"),
            interval,
            tolerance: interval.saturating_mul(burst),
            table: Table::new(c.max_keys as usize),
        }
    }

    /// Counts the request when the limit applies to it; `None` when it does not (no subject,
    /// no API key or no header).
    pub fn check(
        &self,
        parts: &Parts,
        client: IpAddr,
        identity: Option<&Identity>,
        now: Instant,
    ) -> Option<Decision> {
        let hash = match &self.key {
            Key::ClientIp => self.table.hash(&client.to_canonical()),
            Key::Route => 0,
            Key::Subject => self.table.hash(identity?.subject.as_str()),
            Key::ApiKey => self.table.hash(identity?.api_key.as_deref()?),
            Key::Header(name) => {
                let mut values = parts.headers.get_all(name).iter().peekable();
                values.peek()?;
                self.table
                    .hash(&values.map(|v| v.as_bytes()).collect::<Vec<_>>())
            }
        };
        let decision = self.table.acquire(hash, self.table.nanos(now), self);
        if !decision.allowed {
            self.rejected.inc();
        }
        Some(decision)
    }

    fn decide(&self, tat: u64, now: u64) -> (Option<u64>, Decision) {
        let tat = tat.max(now);
        let next = tat.saturating_add(self.interval);
        let ahead = next - now;
        if ahead > self.tolerance {
            let full = tat - now;
            let retry = ahead - self.tolerance;
            return (
                None,
                Decision {
                    allowed: false,
                    remaining: 0,
                    reset: Duration::from_nanos(full),
                    retry_after: Duration::from_nanos(retry),
                },
            );
        }
        (
            Some(next),
            Decision {
                allowed: true,
                remaining: (self.tolerance - ahead) / self.interval,
                reset: Duration::from_nanos(ahead),
                retry_after: Duration::ZERO,
            },
        )
    }
}

/// The table's keys are already keyed hashes: used as they are.
#[derive(Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Tats = HashMap<u64, u64, std::hash::BuildHasherDefault<Prehashed>>;

/// Keys' TATs, in nanoseconds since the table was made, in shards under their own locks.
struct Table {
    hasher: RandomState,
    epoch: Instant,
    per_shard: usize,
    shards: Box<[Mutex<Tats>]>,
}

impl Table {
    fn new(max_keys: usize) -> Table {
        Table {
            hasher: RandomState::new(),
            epoch: Instant::now(),
            per_shard: (max_keys / SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(Tats::default())).collect(),
        }
    }

    fn hash<T: std::hash::Hash + ?Sized>(&self, key: &T) -> u64 {
        self.hasher.hash_one(key)
    }

    fn nanos(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn acquire(&self, hash: u64, now: u64, limit: &Limit) -> Decision {
        // Bits the shard maps do not use for buckets or control bytes.
        let shard = &self.shards[(hash >> 32) as usize % SHARDS];
        // A poisoned lock only means another thread panicked mid-update of two integers.
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tat) = map.get_mut(&hash) {
            let (next, decision) = limit.decide(*tat, now);
            if let Some(next) = next {
                *tat = next;
            }
            return decision;
        }
        let (next, decision) = limit.decide(0, now);
        if let Some(next) = next {
            if map.len() >= self.per_shard {
                evict(&mut map, self.per_shard, now);
            }
            map.insert(hash, next);
        }
        decision
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

/// Makes room in a full shard: keys whose bucket is full again go first; if that frees less
/// than an eighth, arbitrary keys go until an eighth is free.
fn evict(map: &mut Tats, capacity: usize, now: u64) {
    map.retain(|_, tat| *tat > now);
    let target = capacity - capacity / 8 - 1;
    if map.len() > target {
        let excess = map.len() - target;
        let victims: Vec<u64> = map.keys().take(excess).copied().collect();
        for k in victims {
            map.remove(&k);
        }
    }
}

/// A route's limits.
pub struct Limits {
    limits: Vec<Limit>,
}

impl Limits {
    pub fn new(route: &str, configs: &[RateLimitConfig]) -> Limits {
        Limits {
            limits: configs
                .iter()
                .enumerate()
                .map(|(i, c)| Limit::new(route, i, c))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Checks the limits that do (`after_auth`) or do not need the identity. Every limit that
    /// applies is charged until one refuses; the refusal carries Retry-After, RateLimit-Policy
    /// and RateLimit. On success, `closest` becomes the limit closest to its end when it is
    /// closer than the one already there (limits checked after authentication may replace the
    /// ones before): [`Limits::headers`] turns it into the response's pair. `now`: when the
    /// request arrived.
    pub fn check(
        &self,
        after_auth: bool,
        parts: &Parts,
        client: IpAddr,
        identity: Option<&Identity>,
        now: Instant,
        closest: &mut Option<Closest>,
    ) -> Result<(), Rejection> {
        let mut tightest: Option<Closest> = None;
        for (index, limit) in self.limits.iter().enumerate() {
            if limit.key.needs_identity() != after_auth {
                continue;
            }
            let Some(d) = limit.check(parts, client, identity, now) else {
                continue;
            };
            if !d.allowed {
                let secs = d.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                return Err(Rejection::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("ratelimit:{}", limit.name),
                    format!("rate limit `{}` exceeded; retry in {secs} s", limit.name),
                )
                .with_header(hyper::header::RETRY_AFTER, &secs.to_string())
                .with_header(RATELIMIT_POLICY, limit.policy.to_str().unwrap_or_default())
                .with_header(
                    RATELIMIT,
                    std::str::from_utf8(&rate_item(limit, &d)).unwrap_or_default(),
                ));
            }
            if tightest.is_none_or(|t| d.remaining < t.decision.remaining) {
                tightest = Some(Closest { index, decision: d });
            }
        }
        if let Some(t) = tightest {
            if closest.is_none_or(|c| c.decision.remaining >= t.decision.remaining) {
                *closest = Some(t);
            }
        }
        Ok(())
    }

    /// RateLimit-Policy and RateLimit for `closest`, a limit of this route.
    pub fn headers(&self, closest: &Closest, headers: &mut hyper::HeaderMap) {
        let Some(limit) = self.limits.get(closest.index) else {
            return;
        };
        headers.insert(RATELIMIT_POLICY, limit.policy.clone());
        if let Ok(v) = HeaderValue::from_maybe_shared(rate_item(limit, &closest.decision)) {
            headers.insert(RATELIMIT, v);
        }
    }
}

/// The limit of a route closest to refusing the request, and its decision.
#[derive(Clone, Copy, Debug)]
pub struct Closest {
    index: usize,
    decision: Decision,
}

/// `"NAME";r=REMAINING;t=SECONDS`, an item of RateLimit.
fn rate_item(limit: &Limit, d: &Decision) -> bytes::Bytes {
    let mut numbers = itoa::Buffer::new();
    let mut out = Vec::with_capacity(limit.name.len() + 32);
    out.push(b'"');
    out.extend_from_slice(limit.name.as_bytes());
    out.extend_from_slice(b"\";r=");
    out.extend_from_slice(numbers.format(d.remaining).as_bytes());
    out.extend_from_slice(b";t=");
    out.extend_from_slice(
        numbers
            .format(d.reset.as_secs_f64().ceil() as u64)
            .as_bytes(),
    );
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(limit: u32, per: u64, burst: Option<u32>, max_keys: u32) -> Limit {
        Limit::new(
            "test",
            0,
            &RateLimitConfig {
                name: Some("l".into()),
                key: "client_ip".into(),
                limit,
                per: Duration::from_secs(per),
                burst,
                max_keys,
            },
        )
    }

    fn parts() -> Parts {
        hyper::Request::new(()).into_parts().0
    }

    #[test]
    fn allows_the_burst_then_the_rate() {
        let l = limit(10, 1, Some(3), 1000);
        let p = parts();
        let ip: IpAddr = "198.18.0.1".parse().unwrap();
        let t0 = Instant::now();
        for left in [2, 1, 0] {
            let d = l.check(&p, ip, None, t0).unwrap();
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
        }
        let d = l.check(&p, ip, None, t0).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(100));
        // Another key has its own bucket.
        assert!(
            l.check(&p, "198.18.0.2".parse().unwrap(), None, t0)
                .unwrap()
                .allowed
        );
        // One interval later, one more request.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.check(&p, ip, None, t1).unwrap().allowed);
        assert!(!l.check(&p, ip, None, t1).unwrap().allowed);
        // Over a long run, the rate holds: 10 per second.
        let mut allowed = 0;
        for ms in (200..10_200).step_by(10) {
            if l.check(&p, ip, None, t0 + Duration::from_millis(ms))
                .unwrap()
                .allowed
            {
                allowed += 1;
            }
        }
        assert!((99..=101).contains(&allowed), "{allowed}");
    }

    #[test]
    fn the_table_stays_bounded_when_keys_explode() {
        let l = limit(5, 60, None, 1024);
        let p = parts();
        let now = Instant::now();
        for i in 0..100_000u32 {
            let ip = IpAddr::from(std::net::Ipv6Addr::from(u128::from(i) << 64));
            assert!(l.check(&p, ip, None, now).unwrap().allowed);
        }
        assert!(l.table.len() <= 1024, "{}", l.table.len());
        // A key seen recently is still limited after the churn, unless it was evicted;
        // a fresh key can always get through.
        let fresh: IpAddr = "198.18.9.9".parse().unwrap();
        assert!(l.check(&p, fresh, None, now).unwrap().allowed);
    }

    #[test]
    fn keys_that_need_what_the_request_lacks_do_not_count() {
        let mut c = RateLimitConfig {
            name: None,
            key: "header:x-tenant".into(),
            limit: 1,
            per: Duration::from_secs(60),
            burst: None,
            max_keys: 1000,
        };
        let l = Limit::new("r", 0, &c);
        let p = parts();
        let ip: IpAddr = "198.18.0.1".parse().unwrap();
        assert_eq!(l.check(&p, ip, None, Instant::now()), None);
        c.key = "subject".into();
        let l = Limit::new("r", 0, &c);
        assert_eq!(l.check(&p, ip, None, Instant::now()), None);
        assert!(Key::parse("header:bad name").is_err());
        assert!(Key::parse("cookie").is_err());
    }

    #[test]
    fn refusals_carry_the_headers() {
        let limits = Limits::new(
            "r",
            &[RateLimitConfig {
                name: Some("per-ip".into()),
                key: "client_ip".into(),
                limit: 2,
                per: Duration::from_secs(60),
                burst: None,
                max_keys: 1000,
            }],
        );
        let p = parts();
        let ip: IpAddr = "198.18.0.1".parse().unwrap();
        let mut closest = None;
        limits
            .check(false, &p, ip, None, Instant::now(), &mut closest)
            .unwrap();
        let mut headers = hyper::HeaderMap::new();
        limits.headers(closest.as_ref().unwrap(), &mut headers);
        assert_eq!(headers["ratelimit-policy"], "\"per-ip\";q=2;w=60");
        assert_eq!(headers["ratelimit"], "\"per-ip\";r=1;t=30");
        limits
            .check(false, &p, ip, None, Instant::now(), &mut closest)
            .unwrap();
        let r = limits
            .check(false, &p, ip, None, Instant::now(), &mut closest)
            .unwrap_err();
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers["retry-after"], "30");
        assert_eq!(r.headers["ratelimit"], "\"per-ip\";r=0;t=60");
    }

    #[test]
    fn names_must_fit_in_a_header() {
        let config = |name: &str| RateLimitConfig {
            name: Some(name.into()),
            key: "client_ip".into(),
            limit: 2,
            per: Duration::from_secs(60),
            burst: None,
            max_keys: 1000,
        };
        assert!(config("per-user v2").validate().is_ok());
        for bad in ["", "quote\"d", "back\\slash", "tab\there", "caf\u{e9}"] {
            let (key, message) = config(bad).validate().unwrap_err();
            assert_eq!(key, ["name"], "{bad:?}");
            assert!(message.contains("printable ASCII"), "{message}");
        }
    }
}
