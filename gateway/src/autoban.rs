//! Auto-ban: clients that the security pipeline keeps refusing go on the blocklist for a while.
//!
//! ```text
//!  proxy worker                      daemon                              kernel / disk
//!  reject() ── note(client, rule) ─► Tracker: per rule, a bounded table
//!                                    of sources and their recent refusals
//!                                    threshold reached ─► Ban ─► queue ─► apply(): checks, then
//!                                                                  Lists::add (XDP maps, state file)
//!  admit() ◄── refusal(client) ◄──── BanSet: the auto entries, for the L7 check
//! ```
//!
//! - **Who is counted.** The proxy's client address: the peer, or through
//!   `proxy.trusted_proxies` the right-most untrusted X-Forwarded-For address. Counting the
//!   peer instead would ban a whole load balancer for one client behind it. Never counted:
//!   loopback and unspecified addresses, and the trusted proxies themselves (a request whose
//!   X-Forwarded-For names no one else).
//! - **Where a ban is enforced.** The entry goes on the blocklist like `gateway block add`
//!   (origin `auto:RULE`, reason, TTL), so XDP drops every packet of an address the box sees at
//!   L3, and it persists across restarts. The proxy itself also refuses clients covered by an
//!   auto entry (403 `banned`, rule `autoban:RULE`): that is what enforces a ban on a client
//!   seen only through X-Forwarded-For, and every ban when `xdp.enabled = false`.
//! - **Who is never banned.** A client on the allowlist (the ban is skipped); when a prefix ban
//!   would cover an allowlisted network, only the client's own address is banned. Allowlist
//!   entries added later win too, in the kernel and in the L7 check.
//! - **Bounded.** Each rule counts at most `autoban.tracked_sources` sources in a fixed table
//!   (four slots per bucket, keyed by a hash with a random seed); a new source replaces a slot
//!   whose window has passed, else the one with the fewest refusals, so a flood of one-shot
//!   sources (random X-Forwarded-For addresses) cannot push out a repeat offender. At most
//!   `autoban.max_entries` auto entries are on the blocklist at once.
//! - **Cheap.** Requests that are not refused never get here. A refusal takes one bucket lock
//!   per matching rule; the L7 check of a request is one relaxed atomic load while there are no
//!   auto entries, else an `ArcSwap` load and one hash lookup per prefix length in use.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, LazyLock, Mutex,
    },
    time::{Duration, Instant},
};

use arc_swap::{ArcSwap, ArcSwapOption};
use hyper::StatusCode;
use ipnet::IpNet;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::{
    config::Config,
    lists::{self, Enforcer, Entry, ListKind, Lists, AUTO_ORIGIN},
    metrics::METRICS,
    proxy::reject::Rejection,
};

/// Bans waiting for the daemon to apply them; more are dropped and counted.
pub const QUEUE: usize = 4096;
/// Slots per bucket of a rule's table.
const WAYS: usize = 4;
/// Longest rule name: `auto:NAME` stays short in `gateway block list`.
const MAX_NAME: usize = 32;

/// `[autoban]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AutobanConfig {
    /// Auto entries on the blocklist at once, at most; further bans are skipped and counted
    /// (`gateway_autoban_skipped_total{reason="limit"}`), so a flood of forged sources cannot
    /// fill the blocklist.
    pub max_entries: u32,
    /// Sources each rule counts at once (about 32 bytes each).
    pub tracked_sources: u32,
    /// The rules, by name; the name is the entry's origin (`auto:NAME`).
    pub rules: BTreeMap<String, RuleConfig>,
}

impl Default for AutobanConfig {
    fn default() -> Self {
        AutobanConfig {
            max_entries: 10_000,
            tracked_sources: 65_536,
            rules: BTreeMap::new(),
        }
    }
}

/// `[autoban.rules.NAME]`: `threshold` refusals of the kinds in `on` from one client (or its
/// `prefix_v4` / `prefix_v6` network) within `window` put that network on the blocklist for
/// `ttl`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// What counts: `auth_failure` (401/403 of the auth phase), `inspection_block`,
    /// `rate_limited`, `any_rejection` (every 4xx refusal of the security pipeline), or a rule
    /// id as the audit log shows it (`inspect:sqli-003`, `auth:expired`), with a trailing `*`
    /// for a prefix (`inspect:sqli-*`). One value or a list.
    #[serde(deserialize_with = "one_or_many")]
    pub on: Vec<String>,
    pub threshold: u32,
    #[serde(deserialize_with = "crate::config::duration")]
    pub window: Duration,
    #[serde(deserialize_with = "crate::config::duration")]
    pub ttl: Duration,
    /// Ban (and count) IPv4 clients per /prefix_v4 network.
    #[serde(default = "default_prefix_v4")]
    pub prefix_v4: u8,
    /// Ban (and count) IPv6 clients per /prefix_v6 network.
    #[serde(default = "default_prefix_v6")]
    pub prefix_v6: u8,
}

fn default_prefix_v4() -> u8 {
    32
}

fn default_prefix_v6() -> u8 {
    128
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a string or a list of strings")]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::One(s) => vec![s],
        Raw::Many(v) => v,
    })
}

impl AutobanConfig {
    /// Checks what serde cannot; on error the key path and what is wrong.
    pub fn validate(&self) -> Result<(), (Vec<String>, String)> {
        let key = |parts: &[&str]| parts.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        if self.max_entries == 0 || self.max_entries > crate::config::MAX_CAPACITY {
            return Err((
                key(&["autoban", "max_entries"]),
                format!(
                    "{} is not in 1..={}",
                    self.max_entries,
                    crate::config::MAX_CAPACITY
                ),
            ));
        }
        if !(WAYS as u32..=1 << 24).contains(&self.tracked_sources) {
            return Err((
                key(&["autoban", "tracked_sources"]),
                format!("{} is not in {WAYS}..={}", self.tracked_sources, 1 << 24),
            ));
        }
        for (name, rule) in &self.rules {
            let at = |k: &str| key(&["autoban", "rules", name, k]);
            if name.is_empty()
                || name.len() > MAX_NAME
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err((
                    key(&["autoban", "rules", name]),
                    format!("the rule name must be 1 to {MAX_NAME} letters, digits, `-` or `_`"),
                ));
            }
            if rule.on.is_empty() {
                return Err((at("on"), "name at least one kind of refusal".into()));
            }
            for on in &rule.on {
                Trigger::parse(on).map_err(|e| (at("on"), e))?;
            }
            if rule.threshold == 0 {
                return Err((at("threshold"), "must be at least 1".into()));
            }
            if rule.window.is_zero() || rule.window > Duration::from_secs(86_400) {
                return Err((at("window"), "must be above zero and at most 1 day".into()));
            }
            if rule.ttl.is_zero() || rule.ttl > Duration::from_secs(10 * 365 * 86_400) {
                return Err((at("ttl"), "must be above zero and at most 10 years".into()));
            }
            if rule.prefix_v4 == 0 || rule.prefix_v4 > 32 {
                return Err((
                    at("prefix_v4"),
                    format!("{} is not in 1..=32", rule.prefix_v4),
                ));
            }
            if rule.prefix_v6 == 0 || rule.prefix_v6 > 128 {
                return Err((
                    at("prefix_v6"),
                    format!("{} is not in 1..=128", rule.prefix_v6),
                ));
            }
        }
        Ok(())
    }
}

/// One value of a rule's `on`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Trigger {
    AuthFailure,
    InspectionBlock,
    RateLimited,
    AnyRejection,
    Rule(String),
    RulePrefix(String),
}

impl Trigger {
    fn parse(text: &str) -> Result<Trigger, String> {
        Ok(match text {
            "auth_failure" => Trigger::AuthFailure,
            "inspection_block" => Trigger::InspectionBlock,
            "rate_limited" => Trigger::RateLimited,
            "any_rejection" => Trigger::AnyRejection,
            id if id.contains(':') && !id.starts_with("autoban:") && !id.contains(char::is_whitespace) => {
                match id.strip_suffix('*') {
                    Some(prefix) => Trigger::RulePrefix(prefix.to_string()),
                    None => Trigger::Rule(id.to_string()),
                }
            }
            other => {
                return Err(format!(
                    "`{other}` is not auth_failure, inspection_block, rate_limited, any_rejection or a rule id such as `inspect:sqli-003`"
                ))
            }
        })
    }

    /// Whether a refusal by `rule` with `status` counts. Only refusals that are the client's
    /// fault count: never a 5xx (an identity provider that is down is not the client's doing).
    fn matches(&self, rule: &str, status: u16) -> bool {
        if !(400..500).contains(&status) {
            return false;
        }
        match self {
            Trigger::AuthFailure => rule.starts_with("auth:"),
            Trigger::InspectionBlock => rule.starts_with("inspect:"),
            Trigger::RateLimited => rule.starts_with("ratelimit:"),
            Trigger::AnyRejection => true,
            Trigger::Rule(id) => rule == id,
            Trigger::RulePrefix(prefix) => rule.starts_with(prefix.as_str()),
        }
    }
}

/// A client that crossed a rule's threshold, on its way to the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    pub rule: Arc<str>,
    /// The network to ban: the client masked to the rule's prefix.
    pub net: IpNet,
    /// The client whose refusals crossed the threshold.
    pub client: IpAddr,
    pub ttl: Duration,
    /// Refusals counted, and within what window.
    pub count: u32,
    pub window: Duration,
    /// The refusal that crossed the threshold (`auth:bad_signature`...).
    pub last: String,
}

impl Ban {
    fn reason(&self) -> String {
        let mut reason = format!(
            "{} refusals in {} (last: {})",
            self.count,
            humantime::format_duration(self.window),
            self.last
        );
        if self.net.addr() != self.client {
            reason.push_str(&format!(", client {}", self.client));
        }
        reason.chars().take(lists::MAX_REASON).collect()
    }
}

/// Milliseconds on a monotonic clock private to this module.
fn now_ms() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    EPOCH.elapsed().as_millis() as u64
}

/// One source's refusals in a rule's table; `count == 0` is an empty slot.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    key: u128,
    start_ms: u64,
    count: u32,
}

/// A rule's counting table: fixed size, four slots per bucket, each bucket behind its own lock.
struct Table {
    buckets: Box<[Mutex<[Slot; WAYS]>]>,
    mask: u64,
    seed: u64,
}

impl Table {
    fn new(sources: u32) -> Table {
        let buckets = (sources as usize).div_ceil(WAYS).next_power_of_two();
        Table {
            buckets: (0..buckets)
                .map(|_| Mutex::new([Slot::default(); WAYS]))
                .collect(),
            mask: buckets as u64 - 1,
            seed: crate::xdp::random_seed().unwrap_or_else(|_| now_ms() ^ 0x5eed),
        }
    }

    /// Counts one refusal of `key` at `now`; returns the count when it reaches `threshold`
    /// within `window_ms` (the source then starts again from zero).
    fn hit(&self, key: u128, now: u64, threshold: u32, window_ms: u64) -> Option<u32> {
        use gateway_common::hash::mix;
        let h = mix(mix(self.seed ^ key as u64) ^ (key >> 64) as u64);
        let bucket = &self.buckets[((h >> 32) & self.mask) as usize];
        let mut slots = bucket.lock().unwrap_or_else(|p| p.into_inner());
        let expired = |s: &Slot| now.saturating_sub(s.start_ms) >= window_ms;
        let slot = match slots.iter().position(|s| s.count > 0 && s.key == key) {
            Some(i) => {
                let s = &mut slots[i];
                if expired(s) {
                    *s = Slot {
                        key,
                        start_ms: now,
                        count: 0,
                    };
                }
                s
            }
            None => {
                // A free or stale slot, else the one with the fewest refusals (the oldest of
                // those): one-shot sources replace each other, not a repeat offender.
                let i = (0..WAYS)
                    .min_by_key(|i| {
                        let s = &slots[*i];
                        if s.count == 0 || expired(s) {
                            (0, 0)
                        } else {
                            (s.count, s.start_ms)
                        }
                    })
                    .unwrap_or(0);
                slots[i] = Slot {
                    key,
                    start_ms: now,
                    count: 0,
                };
                &mut slots[i]
            }
        };
        slot.count += 1;
        if slot.count >= threshold {
            let count = slot.count;
            *slot = Slot::default();
            return Some(count);
        }
        None
    }
}

/// A compiled rule.
struct Rule {
    name: Arc<str>,
    config: RuleConfig,
    triggers: Vec<Trigger>,
    table: Arc<Table>,
}

/// The rules of one config generation, with their tables.
pub struct Tracker {
    rules: Vec<Rule>,
    /// `autoban.tracked_sources` the tables were made for.
    tracked: u32,
    trusted: Vec<IpNet>,
    max_entries: usize,
    tx: mpsc::Sender<Ban>,
}

impl Tracker {
    /// Compiles `config`'s rules (validated already); tables of rules that did not change are
    /// taken over from `previous`, so a reload does not forget who was counted.
    fn new(config: &Config, tx: mpsc::Sender<Ban>, previous: Option<&Tracker>) -> Tracker {
        let a = &config.autoban;
        let rules = a
            .rules
            .iter()
            .map(|(name, rc)| {
                let table = previous
                    .and_then(|p| {
                        p.rules
                            .iter()
                            .find(|r| *r.name == **name && r.config == *rc)
                    })
                    .filter(|_| previous.is_some_and(|p| p.tracked == a.tracked_sources))
                    .map(|r| r.table.clone())
                    .unwrap_or_else(|| Arc::new(Table::new(a.tracked_sources)));
                Rule {
                    name: name.as_str().into(),
                    config: rc.clone(),
                    triggers: rc
                        .on
                        .iter()
                        .filter_map(|t| Trigger::parse(t).ok())
                        .collect(),
                    table,
                }
            })
            .collect();
        Tracker {
            rules,
            tracked: a.tracked_sources,
            trusted: config.proxy.trusted_proxies.clone(),
            max_entries: a.max_entries as usize,
            tx,
        }
    }

    /// Whether `client` may be counted at all.
    fn exempt(&self, client: IpAddr) -> bool {
        client.is_loopback()
            || client.is_unspecified()
            || client.is_multicast()
            || self.trusted.iter().any(|n| n.contains(&client))
    }

    /// Counts a refusal of `client` by `rule` with `status` against every rule it matches.
    fn note(&self, client: IpAddr, rule: &str, status: u16) {
        if rule.starts_with("autoban:") {
            return;
        }
        let client = client.to_canonical();
        if self.exempt(client) {
            return;
        }
        let mut now = None;
        for r in &self.rules {
            if !r.triggers.iter().any(|t| t.matches(rule, status)) {
                continue;
            }
            let now = *now.get_or_insert_with(now_ms);
            let net = match client {
                IpAddr::V4(a) => IpNet::new(a.into(), r.config.prefix_v4),
                IpAddr::V6(a) => IpNet::new(a.into(), r.config.prefix_v6),
            }
            .map(|n| n.trunc())
            .unwrap_or_else(|_| IpNet::from(client));
            let key = match net.network() {
                IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
                IpAddr::V6(a) => u128::from(a),
            } ^ u128::from(net.prefix_len());
            let window_ms = r.config.window.as_millis() as u64;
            let Some(count) = r.table.hit(key, now, r.config.threshold, window_ms) else {
                continue;
            };
            let ban = Ban {
                rule: r.name.clone(),
                net,
                client,
                ttl: r.config.ttl,
                count,
                window: r.config.window,
                last: rule.to_string(),
            };
            if self.tx.try_send(ban).is_err() {
                METRICS
                    .autoban_skipped
                    .with_label_values(&["queue_full"])
                    .inc();
            }
        }
    }
}

/// Networks with a value each, looked up by address: one hash map per prefix length in use,
/// longest first.
#[derive(Default)]
struct PrefixSet<V> {
    v4: Vec<(u8, HashMap<u32, V>)>,
    v6: Vec<(u8, HashMap<u128, V>)>,
}

impl<V> PrefixSet<V> {
    fn insert(&mut self, net: IpNet, value: V) {
        fn at<K, V>(tables: &mut Vec<(u8, HashMap<K, V>)>, len: u8) -> &mut HashMap<K, V> {
            let i = match tables.iter().position(|(l, _)| *l == len) {
                Some(i) => i,
                None => {
                    tables.push((len, HashMap::new()));
                    tables.sort_by_key(|t| std::cmp::Reverse(t.0));
                    tables.iter().position(|(l, _)| *l == len).unwrap_or(0)
                }
            };
            &mut tables[i].1
        }
        let net = net.trunc();
        match net {
            IpNet::V4(n) => {
                at(&mut self.v4, n.prefix_len()).insert(u32::from(n.network()), value);
            }
            IpNet::V6(n) => {
                at(&mut self.v6, n.prefix_len()).insert(u128::from(n.network()), value);
            }
        }
    }

    fn get(&self, addr: IpAddr) -> Option<&V> {
        match addr.to_canonical() {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().find_map(|(len, t)| {
                    let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
                    t.get(&(a & mask))
                })
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().find_map(|(len, t)| {
                    let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
                    t.get(&(a & mask))
                })
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// The auto entries in force, for the proxy's own check.
#[derive(Default)]
pub struct BanSet {
    banned: PrefixSet<Arc<str>>,
    /// Allowlisted networks inside banned ones: they win.
    exempt: PrefixSet<()>,
}

impl BanSet {
    /// The auto entries of `lists` (minus those an allowlist entry covers whole).
    pub fn build(lists: &Lists) -> BanSet {
        let mut set = BanSet::default();
        for e in lists.auto_entries() {
            let covered = lists
                .covering(ListKind::Allow, e.net.network(), e.net.prefix_len())
                .is_some();
            if !covered {
                set.banned
                    .insert(e.net, e.auto_rule().unwrap_or_default().into());
            }
        }
        if !set.banned.is_empty() {
            for net in lists.nets(ListKind::Allow) {
                if set.banned.get(net.network()).is_some() {
                    set.exempt.insert(net, ());
                }
            }
        }
        set
    }

    /// The rule that banned `client`, if an auto entry covers it.
    pub fn rule(&self, client: IpAddr) -> Option<&str> {
        if self.banned.is_empty() || self.exempt.get(client).is_some() {
            return None;
        }
        self.banned.get(client).map(|r| &**r)
    }
}

/// The process-wide auto-ban state: the rules in force and the bans the proxy enforces.
pub struct Hub {
    tracker: ArcSwapOption<Tracker>,
    bans: ArcSwap<BanSet>,
    /// Whether `bans` holds anything: the proxy's check is one load while it does not.
    active: AtomicBool,
    /// The list generation `bans` was built from.
    generation: AtomicU64,
}

pub static HUB: LazyLock<Hub> = LazyLock::new(|| Hub {
    tracker: ArcSwapOption::empty(),
    bans: ArcSwap::from_pointee(BanSet::default()),
    active: AtomicBool::new(false),
    generation: AtomicU64::new(u64::MAX),
});

impl Hub {
    /// Installs the rules of `config` (at start and on reload); bans go to `tx`.
    pub fn configure(&self, config: &Config, tx: mpsc::Sender<Ban>) {
        if config.autoban.rules.is_empty() {
            self.tracker.store(None);
            return;
        }
        let previous = self.tracker.load_full();
        let tracker = Tracker::new(config, tx, previous.as_deref());
        self.tracker.store(Some(Arc::new(tracker)));
    }

    /// Auto entries allowed at once (0 when no rules are configured).
    pub fn max_entries(&self) -> usize {
        self.tracker.load().as_ref().map_or(0, |t| t.max_entries)
    }

    /// Counts a refusal (called by the proxy for every refusal of the security pipeline).
    pub fn note(&self, client: IpAddr, rejection: &Rejection) {
        if let Some(tracker) = self.tracker.load().as_ref() {
            tracker.note(client, &rejection.rule, rejection.status.as_u16());
        }
    }

    /// A refusal for `client` if an auto entry covers it.
    pub fn refusal(&self, client: IpAddr) -> Option<Rejection> {
        if !self.active.load(Relaxed) {
            return None;
        }
        let bans = self.bans.load();
        let rule = bans.rule(client)?;
        Some(Rejection::new(
            StatusCode::FORBIDDEN,
            "banned",
            format!("autoban:{rule}"),
            "this address is banned for a while after repeated refused requests",
        ))
    }

    /// Rebuilds the proxy's view of the auto entries when the lists changed since.
    pub fn sync(&self, lists: &Lists) {
        let generation = lists.generation();
        if self.generation.swap(generation, Relaxed) == generation {
            return;
        }
        let set = BanSet::build(lists);
        let active = !set.banned.is_empty();
        self.bans.store(Arc::new(set));
        self.active.store(active, Relaxed);
    }
}

/// Counts a refusal of `client` (see [`Hub::note`]).
pub fn note(client: IpAddr, rejection: &Rejection) {
    HUB.note(client, rejection);
}

/// The proxy's check: a refusal when `client` is banned (see [`Hub::refusal`]).
pub fn refusal(client: IpAddr) -> Option<Rejection> {
    HUB.refusal(client)
}

/// Why a ban was not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// The client is on the allowlist.
    Allowlisted,
    /// An entry as wide or wider is on the blocklist already.
    Listed,
    /// `autoban.max_entries` auto entries are listed.
    Limit,
}

impl Skipped {
    pub fn name(self) -> &'static str {
        match self {
            Skipped::Allowlisted => "allowlisted",
            Skipped::Listed => "listed",
            Skipped::Limit => "limit",
        }
    }
}

/// What [`apply`] did: the bans that went on the blocklist, and those skipped and why.
pub type Outcome = (Vec<Applied>, Vec<(Ban, Skipped)>);

/// A ban that went on the blocklist.
#[derive(Debug)]
pub struct Applied {
    pub rule: String,
    pub net: String,
    pub client: String,
    pub reason: String,
    /// Milliseconds since the Unix epoch.
    pub expires: u64,
}

/// Puts `bans` on the blocklist through `enforcer` (the XDP maps), all in one change of the
/// lists and one write of the state file. Bans of allowlisted clients, of networks already
/// covered and beyond `max_entries` are skipped. On error nothing changed.
pub fn apply(
    lists: &mut Lists,
    enforcer: &mut dyn Enforcer,
    max_entries: usize,
    bans: Vec<Ban>,
) -> Result<Outcome, String> {
    let now = lists::now_ms();
    let mut skipped = Vec::new();
    let mut entries: Vec<Entry> = Vec::new();
    let mut applied = Vec::new();
    for ban in bans {
        if lists
            .covering(ListKind::Allow, ban.client, u8::MAX)
            .is_some()
        {
            skipped.push((ban, Skipped::Allowlisted));
            continue;
        }
        let mut net = ban.net;
        let host = IpNet::from(ban.client);
        if net.prefix_len() < host.prefix_len()
            && lists
                .nets(ListKind::Allow)
                .iter()
                .any(|a| net.contains(a) || a.contains(&net))
        {
            // The prefix would cover an allowlisted network: ban the client alone.
            net = host;
        }
        let listed = lists
            .covering(ListKind::Block, net.network(), net.prefix_len())
            .is_some()
            || entries.iter().any(|e| e.net.contains(&net));
        if listed {
            skipped.push((ban, Skipped::Listed));
            continue;
        }
        if lists.auto_count() + entries.len() >= max_entries {
            skipped.push((ban, Skipped::Limit));
            continue;
        }
        let reason = ban.reason();
        let expires = now.saturating_add(ban.ttl.as_millis() as u64);
        applied.push(Applied {
            rule: ban.rule.to_string(),
            net: crate::net::display(&net),
            client: ban.client.to_string(),
            reason: reason.clone(),
            expires,
        });
        entries.push(Entry {
            net,
            added: now,
            expires: Some(expires),
            reason: Some(reason),
            origin: format!("{AUTO_ORIGIN}{}", ban.rule),
        });
    }
    if !entries.is_empty() {
        lists.add(enforcer, ListKind::Block, entries)?;
    }
    Ok((applied, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lists::{Capacities, NoEnforcer};

    fn config(text: &str) -> Config {
        Config::parse(
            &format!(
                "[xdp]\nenabled = false\n[proxy]\ntrusted_proxies = [\"10.9.0.0/16\"]\n{text}"
            ),
            std::path::Path::new("t.toml"),
        )
        .unwrap()
    }

    fn rejection(rule: &str, status: u16) -> Rejection {
        Rejection::new(StatusCode::from_u16(status).unwrap(), "x", rule, "m")
    }

    #[test]
    fn triggers_classify_refusals() {
        let t = |s: &str| Trigger::parse(s).unwrap();
        assert!(t("auth_failure").matches("auth:bad_signature", 401));
        assert!(t("auth_failure").matches("auth:insufficient_scope", 403));
        assert!(!t("auth_failure").matches("auth:introspection_unavailable", 503));
        assert!(t("inspection_block").matches("inspect:sqli-003", 403));
        assert!(!t("inspection_block").matches("auth:missing", 401));
        assert!(t("rate_limited").matches("ratelimit:per-ip", 429));
        assert!(t("any_rejection").matches("validate:json_schema", 400));
        assert!(!t("any_rejection").matches("body:timeout", 503));
        assert!(t("inspect:sqli-*").matches("inspect:sqli-010", 403));
        assert!(!t("inspect:sqli-003").matches("inspect:sqli-0031", 403));
        for bad in ["auth", "autoban:x", "", "inspect: x"] {
            assert!(Trigger::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn config_errors_name_the_rule_and_key() {
        let parse = |text: &str| {
            Config::parse(
                &format!("[xdp]\nenabled = false\n{text}"),
                std::path::Path::new("t.toml"),
            )
            .map(|_| ())
            .unwrap_err()
            .to_string()
        };
        let rule = "[autoban.rules.r]\non = \"auth_failure\"\nthreshold = 5\nwindow = \"1m\"\nttl = \"1h\"\n";
        for (extra, expected) in [
            (
                "prefix_v4 = 33\n",
                "autoban.rules.r.prefix_v4: 33 is not in 1..=32",
            ),
            ("prefix_v6 = 0\n", "autoban.rules.r.prefix_v6"),
        ] {
            let err = parse(&format!("{rule}{extra}"));
            assert!(err.contains(expected), "{err}");
        }
        let err = parse(&rule.replace("threshold = 5", "threshold = 0"));
        assert!(
            err.contains("t.toml:5: autoban.rules.r.threshold: must be at least 1"),
            "{err}"
        );
        let err = parse(&rule.replace("\"auth_failure\"", "[\"auth_failure\", \"bogus\"]"));
        assert!(err.contains("autoban.rules.r.on: `bogus`"), "{err}");
        let err = parse(&rule.replace("window = \"1m\"", "window = \"0s\""));
        assert!(err.contains("autoban.rules.r.window"), "{err}");
        let err = parse(&rule.replace("rules.r]", "rules.\"a:b\"]"));
        assert!(err.contains("rule name"), "{err}");
        let err = parse(&rule.replace("ttl = \"1h\"\n", ""));
        assert!(err.contains("ttl"), "{err}");
        let err = parse("[autoban]\nmax_entries = 0\n");
        assert!(err.contains("autoban.max_entries"), "{err}");
        let err = parse(&format!("{rule}colour = 1\n"));
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn a_table_counts_within_the_window_and_resets() {
        let t = Table::new(64);
        assert_eq!(t.hit(7, 0, 3, 1000), None);
        assert_eq!(t.hit(7, 500, 3, 1000), None);
        assert_eq!(t.hit(7, 900, 3, 1000), Some(3));
        // Starts again after a ban.
        assert_eq!(t.hit(7, 901, 3, 1000), None);
        // The window passed: the count starts over.
        assert_eq!(t.hit(7, 2000, 3, 1000), None);
        assert_eq!(t.hit(7, 2100, 3, 1000), None);
        assert_eq!(t.hit(7, 2200, 3, 1000), Some(3));
        assert_eq!(t.hit(8, 0, 1, 1000), Some(1));
    }

    #[test]
    fn one_shot_sources_do_not_push_out_a_repeat_offender() {
        // One bucket: every key shares it.
        let t = Table::new(WAYS as u32);
        for i in 0..4 {
            assert_eq!(t.hit(1, i, 10, 60_000), None);
        }
        for key in 100..10_000u128 {
            assert_eq!(t.hit(key, 10, 10, 60_000), None);
        }
        for i in 0..5 {
            assert_eq!(t.hit(1, 20 + i, 10, 60_000), None);
        }
        assert_eq!(t.hit(1, 30, 10, 60_000), Some(10));
        assert_eq!(t.buckets.len(), 1, "memory grew");
    }

    #[tokio::test]
    async fn clients_are_counted_per_prefix_and_exempt_ones_never() {
        let c = config(
            "[autoban.rules.auth]\non = \"auth_failure\"\nthreshold = 3\nwindow = \"1m\"\nttl = \"10m\"\nprefix_v4 = 24\n\n[autoban.rules.sqli]\non = [\"inspect:sqli-*\"]\nthreshold = 1\nwindow = \"1m\"\nttl = \"1h\"\n",
        );
        let (tx, mut rx) = mpsc::channel(16);
        let tracker = Tracker::new(&c, tx, None);
        let bad = rejection("auth:bad_signature", 401);
        for last in [1, 2, 3] {
            let client: IpAddr = format!("198.51.100.{last}").parse().unwrap();
            tracker.note(client, &bad.rule, 401);
        }
        let ban = rx
            .try_recv()
            .expect("a ban after three refusals in one /24");
        assert_eq!(ban.net.to_string(), "198.51.100.0/24");
        assert_eq!((ban.count, &*ban.rule), (3, "auth"));
        assert!(
            ban.reason()
                .contains("3 refusals in 1m (last: auth:bad_signature), client 198.51.100.3"),
            "{}",
            ban.reason()
        );
        // Not counted: 5xx, the wrong kind, loopback, trusted proxies, the ban check itself.
        for (client, rule, status) in [
            ("203.0.113.1", "auth:keys_unavailable", 503),
            ("203.0.113.1", "ratelimit:x", 429),
            ("127.0.0.1", "inspect:sqli-001", 403),
            ("::1", "inspect:sqli-001", 403),
            ("10.9.3.4", "inspect:sqli-001", 403),
            ("::ffff:10.9.3.4", "inspect:sqli-001", 403),
            ("203.0.113.1", "autoban:auth", 403),
        ] {
            tracker.note(client.parse().unwrap(), rule, status);
        }
        assert!(rx.try_recv().is_err());
        tracker.note("2001:db8::7".parse().unwrap(), "inspect:sqli-002", 403);
        let ban = rx.try_recv().unwrap();
        assert_eq!(
            (ban.net.to_string().as_str(), &*ban.rule),
            ("2001:db8::7/128", "sqli")
        );
    }

    fn lists(dir: &std::path::Path) -> Lists {
        let caps = Capacities {
            block4: 100,
            block6: 100,
            allow4: 100,
            allow6: 100,
        };
        Lists::load(dir, caps).unwrap().0
    }

    fn ban(net: &str, client: &str) -> Ban {
        Ban {
            rule: "auth".into(),
            net: net.parse().unwrap(),
            client: client.parse().unwrap(),
            ttl: Duration::from_secs(600),
            count: 5,
            window: Duration::from_secs(60),
            last: "auth:expired".into(),
        }
    }

    #[test]
    fn bans_skip_allowlisted_listed_and_over_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = lists(dir.path());
        let mut k = NoEnforcer;
        let entry = |net: &str, origin: &str| Entry {
            net: net.parse().unwrap(),
            added: 0,
            expires: None,
            reason: None,
            origin: origin.into(),
        };
        l.add(
            &mut k,
            ListKind::Allow,
            vec![
                entry("192.0.2.7/32", "cli"),
                entry("203.0.113.64/26", "cli"),
            ],
        )
        .unwrap();
        l.add(&mut k, ListKind::Block, vec![entry("198.51.0.0/16", "cli")])
            .unwrap();
        let (applied, skipped) = apply(
            &mut l,
            &mut k,
            3,
            vec![
                ban("192.0.2.7/32", "192.0.2.7"),
                ban("198.51.100.0/24", "198.51.100.9"),
                ban("203.0.113.0/24", "203.0.113.5"),
                ban("2001:db8::/64", "2001:db8::5"),
                ban("2001:db8::/64", "2001:db8::6"),
                ban("100.64.0.1/32", "100.64.0.1"),
                ban("100.64.0.2/32", "100.64.0.2"),
            ],
        )
        .unwrap();
        let nets: Vec<&str> = applied.iter().map(|a| a.net.as_str()).collect();
        // The /24 would cover an allowlisted /26: only the client is banned.
        assert_eq!(nets, ["203.0.113.5", "2001:db8::/64", "100.64.0.1"]);
        let why: Vec<Skipped> = skipped.iter().map(|s| s.1).collect();
        assert_eq!(
            why,
            [
                Skipped::Allowlisted,
                Skipped::Listed,
                Skipped::Listed,
                Skipped::Limit
            ]
        );
        assert_eq!(l.auto_count(), 3);
        let e = l
            .get(ListKind::Block, &"2001:db8::/64".parse().unwrap())
            .unwrap();
        assert_eq!(e.origin, "auto:auth");
        assert!(e.expires.is_some_and(|t| t > lists::now_ms()));
        // Persisted.
        let again = lists(dir.path());
        assert_eq!(again.auto_count(), 3);
    }

    #[test]
    fn the_proxy_refuses_banned_clients_until_the_entry_goes() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = lists(dir.path());
        let mut k = NoEnforcer;
        let hub = Hub {
            tracker: ArcSwapOption::empty(),
            bans: ArcSwap::from_pointee(BanSet::default()),
            active: AtomicBool::new(false),
            generation: AtomicU64::new(u64::MAX),
        };
        hub.sync(&l);
        let client: IpAddr = "198.51.100.9".parse().unwrap();
        assert!(hub.refusal(client).is_none());
        apply(
            &mut l,
            &mut k,
            10,
            vec![ban("198.51.100.0/24", "198.51.100.9")],
        )
        .unwrap();
        hub.sync(&l);
        let r = hub.refusal(client).expect("banned");
        assert_eq!(
            (r.status.as_u16(), r.code, r.rule.as_str()),
            (403, "banned", "autoban:auth")
        );
        assert!(hub
            .refusal("::ffff:198.51.100.200".parse().unwrap())
            .is_some());
        assert!(hub.refusal("198.51.101.1".parse().unwrap()).is_none());
        // An allowlist entry added later wins.
        let allow = Entry {
            net: "198.51.100.200/32".parse().unwrap(),
            added: 0,
            expires: None,
            reason: None,
            origin: "cli".into(),
        };
        l.add(&mut k, ListKind::Allow, vec![allow]).unwrap();
        hub.sync(&l);
        assert!(hub.refusal("198.51.100.200".parse().unwrap()).is_none());
        assert!(hub.refusal(client).is_some());
        l.remove(
            &mut k,
            ListKind::Block,
            &["198.51.100.0/24".parse().unwrap()],
        )
        .unwrap();
        hub.sync(&l);
        assert!(hub.refusal(client).is_none());
        assert!(!hub.active.load(Relaxed));
    }
}
