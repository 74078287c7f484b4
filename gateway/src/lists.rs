//! The blocklist and the allowlist: entries with their origin, reason and expiry, the rules for
//! changing them, and the state file that keeps them across restarts and power cuts.
//!
//! Every change is a transaction over three copies of the truth, made in this order:
//! 1. the kernel maps (through an [`Enforcer`]), so the change is enforced at once;
//! 2. the in-memory lists;
//! 3. the state file, rewritten atomically (temporary file, fsync, rename, fsync of the
//!    directory).
//!
//! When a later step fails, the earlier ones are undone, so the kernel, the daemon and the disk
//! never disagree and a failed command changes nothing.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fs,
    io::{self, Write as _},
    net::IpAddr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{config::RateConfig, net};

/// The name of the state file inside the state directory.
pub const STATE_FILE: &str = "lists.json";
/// The origin of entries the auto-ban rules add: `auto:RULE`. Origins given through the admin
/// socket cannot contain `:`, so these are only ever the daemon's own.
pub const AUTO_ORIGIN: &str = "auto:";
/// Longest reason kept with an entry.
pub const MAX_REASON: usize = 256;
const STATE_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    Block,
    Allow,
}

impl ListKind {
    pub fn name(self) -> &'static str {
        match self {
            ListKind::Block => "blocklist",
            ListKind::Allow => "allowlist",
        }
    }
}

/// One listed address or network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub net: IpNet,
    /// When it was added, in milliseconds since the Unix epoch.
    pub added: u64,
    /// When it expires (milliseconds since the Unix epoch); never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who added it: `cli`, `import`, `auto:RULE` (an auto-ban rule)...
    pub origin: String,
}

impl Entry {
    /// The auto-ban rule that added this entry, if one did.
    pub fn auto_rule(&self) -> Option<&str> {
        self.origin.strip_prefix(AUTO_ORIGIN)
    }
}

/// How many entries each list may hold, per address family (from the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    pub block4: u32,
    pub block6: u32,
    pub allow4: u32,
    pub allow6: u32,
}

impl Capacities {
    /// The capacity for one list and family, with the config key that sets it.
    pub fn of(&self, kind: ListKind, v4: bool) -> (u32, &'static str) {
        match (kind, v4) {
            (ListKind::Block, true) => (self.block4, "xdp.blocklist_v4_capacity"),
            (ListKind::Block, false) => (self.block6, "xdp.blocklist_v6_capacity"),
            (ListKind::Allow, true) => (self.allow4, "xdp.allowlist_v4_capacity"),
            (ListKind::Allow, false) => (self.allow6, "xdp.allowlist_v6_capacity"),
        }
    }
}

/// What enforces the lists: the XDP maps, or nothing when XDP is off.
pub trait Enforcer {
    /// Makes every net in `nets` enforced; on error, none of them is.
    fn insert(&mut self, kind: ListKind, nets: &[IpNet]) -> Result<(), String>;
    /// Stops enforcing every net in `nets`; on error, all of them still are.
    fn remove(&mut self, kind: ListKind, nets: &[IpNet]) -> Result<(), String>;
}

/// No enforcement (XDP disabled): the lists are still kept and persisted.
pub struct NoEnforcer;

impl Enforcer for NoEnforcer {
    fn insert(&mut self, _: ListKind, _: &[IpNet]) -> Result<(), String> {
        Ok(())
    }
    fn remove(&mut self, _: ListKind, _: &[IpNet]) -> Result<(), String> {
        Ok(())
    }
}

/// The on-disk form.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ratelimit: Option<RateConfig>,
    #[serde(default)]
    block: Vec<Entry>,
    #[serde(default)]
    allow: Vec<Entry>,
}

/// The lists as the daemon holds them.
#[derive(Debug)]
pub struct Lists {
    block: HashMap<IpNet, Entry>,
    allow: HashMap<IpNet, Entry>,
    /// (expiry, list, net) of every entry with a TTL, soonest first.
    expiry: BTreeSet<(u64, ListKind, IpNet)>,
    /// The rate limit set with `gateway ratelimit set`, overriding the config until reset.
    ratelimit: Option<RateConfig>,
    capacities: Capacities,
    /// IPv4 and IPv6 entries per list: [block v4, block v6, allow v4, allow v6].
    counts: [usize; 4],
    /// Blocklist entries added by auto-ban rules.
    auto: HashSet<IpNet>,
    /// Changes with every change of either list, so views derived from them know when to
    /// rebuild.
    generation: u64,
    path: PathBuf,
}

/// What a successful add did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AddOutcome {
    pub added: usize,
    pub updated: usize,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Checks a reason given by an operator or a feed.
pub fn check_reason(reason: &str) -> Result<(), String> {
    if reason.chars().count() > MAX_REASON {
        return Err(format!("reason is longer than {MAX_REASON} characters"));
    }
    if reason.chars().any(|c| c.is_control()) {
        return Err("reason contains control characters".into());
    }
    Ok(())
}

impl Lists {
    /// Loads the lists from `dir/lists.json` (empty when the file does not exist yet). Entries
    /// that expired while the daemon was down are dropped. A file that cannot be read or parsed
    /// is an error: starting with empty lists would silently unblock everything.
    pub fn load(dir: &Path, capacities: Capacities) -> Result<(Lists, usize), String> {
        let path = dir.join(STATE_FILE);
        let mut lists = Lists {
            block: HashMap::new(),
            allow: HashMap::new(),
            expiry: BTreeSet::new(),
            ratelimit: None,
            capacities,
            counts: [0; 4],
            auto: HashSet::new(),
            generation: 0,
            path: path.clone(),
        };
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((lists, 0)),
            Err(e) => return Err(format!("{}: cannot read state file: {e}", path.display())),
        };
        let state: StateFile = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{}: state file is corrupt ({e}); move it aside to start with empty lists",
                path.display()
            )
        })?;
        if state.version != STATE_VERSION {
            return Err(format!(
                "{}: state file version {} is not supported (expected {STATE_VERSION})",
                path.display(),
                state.version
            ));
        }
        if let Some(rate) = state.ratelimit {
            rate.settings()
                .map_err(|e| format!("{}: stored rate limit is invalid: {e}", path.display()))?;
            lists.ratelimit = Some(rate);
        }
        let now = now_ms();
        let mut expired = 0;
        for (kind, entries) in [
            (ListKind::Block, state.block),
            (ListKind::Allow, state.allow),
        ] {
            for entry in entries {
                if entry.net.trunc() != entry.net {
                    return Err(format!(
                        "{}: state file holds {} with host bits set",
                        path.display(),
                        entry.net
                    ));
                }
                if entry.expires.is_some_and(|t| t <= now) {
                    expired += 1;
                    continue;
                }
                lists.put(kind, entry);
            }
        }
        Ok((lists, expired))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn ratelimit(&self) -> Option<RateConfig> {
        self.ratelimit
    }

    /// Entries of `kind` of one address family.
    pub fn count(&self, kind: ListKind, v4: bool) -> usize {
        self.counts[Self::count_slot(kind, v4)]
    }

    fn count_slot(kind: ListKind, v4: bool) -> usize {
        let list = match kind {
            ListKind::Block => 0,
            ListKind::Allow => 2,
        };
        list + usize::from(!v4)
    }

    pub fn len(&self, kind: ListKind) -> usize {
        self.map(kind).len()
    }

    pub fn is_empty(&self, kind: ListKind) -> bool {
        self.map(kind).is_empty()
    }

    /// Every net of `kind`, for loading into the kernel.
    pub fn nets(&self, kind: ListKind) -> Vec<IpNet> {
        self.map(kind).keys().copied().collect()
    }

    /// The entries of `kind`, sorted by network.
    pub fn entries(&self, kind: ListKind) -> Vec<&Entry> {
        let mut entries: Vec<&Entry> = self.map(kind).values().collect();
        entries.sort_by_key(|e| e.net);
        entries
    }

    pub fn get(&self, kind: ListKind, net: &IpNet) -> Option<&Entry> {
        self.map(kind).get(net)
    }

    /// The entry of `kind` that holds `addr` with the longest prefix of at most `max_len`
    /// bits, if any: one hash lookup per prefix length.
    pub fn covering(&self, kind: ListKind, addr: IpAddr, max_len: u8) -> Option<&Entry> {
        let map = self.map(kind);
        if map.is_empty() {
            return None;
        }
        let top = match addr {
            IpAddr::V4(_) => max_len.min(32),
            IpAddr::V6(_) => max_len.min(128),
        };
        (0..=top)
            .rev()
            .filter_map(|len| IpNet::new(addr, len).ok())
            .find_map(|net| map.get(&net.trunc()))
    }

    /// The blocklist entries auto-ban rules added.
    pub fn auto_entries(&self) -> impl Iterator<Item = &Entry> {
        self.auto.iter().filter_map(|net| self.block.get(net))
    }

    /// How many blocklist entries auto-ban rules added.
    pub fn auto_count(&self) -> usize {
        self.auto.len()
    }

    /// Changes whenever either list changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn map(&self, kind: ListKind) -> &HashMap<IpNet, Entry> {
        match kind {
            ListKind::Block => &self.block,
            ListKind::Allow => &self.allow,
        }
    }

    fn map_mut(&mut self, kind: ListKind) -> &mut HashMap<IpNet, Entry> {
        match kind {
            ListKind::Block => &mut self.block,
            ListKind::Allow => &mut self.allow,
        }
    }

    /// Inserts or replaces, keeping the expiry index right. Returns the replaced entry.
    fn put(&mut self, kind: ListKind, entry: Entry) -> Option<Entry> {
        let (net, expires) = (entry.net, entry.expires);
        self.generation += 1;
        if kind == ListKind::Block {
            if entry.auto_rule().is_some() {
                self.auto.insert(net);
            } else {
                self.auto.remove(&net);
            }
        }
        let old = self.map_mut(kind).insert(net, entry);
        if old.is_none() {
            self.counts[Self::count_slot(kind, matches!(net, IpNet::V4(_)))] += 1;
        }
        if let Some(at) = old.as_ref().and_then(|o| o.expires) {
            self.expiry.remove(&(at, kind, net));
        }
        if let Some(at) = expires {
            self.expiry.insert((at, kind, net));
        }
        old
    }

    fn take(&mut self, kind: ListKind, net: &IpNet) -> Option<Entry> {
        let old = self.map_mut(kind).remove(net)?;
        self.generation += 1;
        if kind == ListKind::Block {
            self.auto.remove(net);
        }
        self.counts[Self::count_slot(kind, matches!(net, IpNet::V4(_)))] -= 1;
        if let Some(at) = old.expires {
            self.expiry.remove(&(at, kind, *net));
        }
        Some(old)
    }

    /// Adds `entries` to `kind`, or updates the reason and expiry of those already there. All
    /// or nothing: a full list, a kernel failure or a failure to save changes nothing.
    pub fn add(
        &mut self,
        enforcer: &mut dyn Enforcer,
        kind: ListKind,
        entries: Vec<Entry>,
    ) -> Result<AddOutcome, String> {
        // Later duplicates of the same net win, as when applied one after another: reverse,
        // stable sort, keep the first of each run.
        let mut batch = entries;
        if let Some(bad) = batch.iter().find(|e| e.net.trunc() != e.net) {
            return Err(format!(
                "`{}` has host bits set; did you mean {}?",
                bad.net,
                bad.net.trunc()
            ));
        }
        batch.reverse();
        batch.sort_by_key(|e| e.net);
        batch.dedup_by_key(|e| e.net);
        let new: Vec<IpNet> = batch
            .iter()
            .map(|e| e.net)
            .filter(|n| !self.map(kind).contains_key(n))
            .collect();
        for v4 in [true, false] {
            let adding = new
                .iter()
                .filter(|n| matches!(n, IpNet::V4(_)) == v4)
                .count();
            let present = self.count(kind, v4);
            let (capacity, key) = self.capacities.of(kind, v4);
            if present + adding > capacity as usize {
                return Err(format!(
                    "{} full: {present} IPv{} entries present, {adding} more do not fit in {capacity} ({key})",
                    kind.name(),
                    if v4 { 4 } else { 6 },
                ));
            }
        }
        let started = std::time::Instant::now();
        enforcer.insert(kind, &new)?;
        let kernel_time = started.elapsed();
        let outcome = AddOutcome {
            added: new.len(),
            updated: batch.len() - new.len(),
        };
        self.map_mut(kind).reserve(new.len());
        let mut undo: Vec<(IpNet, Option<Entry>)> = Vec::with_capacity(batch.len());
        for entry in batch {
            undo.push((entry.net, self.put(kind, entry)));
        }
        let started = std::time::Instant::now();
        let saved = self.save();
        tracing::debug!(entries = undo.len(), kernel = ?kernel_time, save = ?started.elapsed(), "list add");
        if let Err(e) = saved {
            for (net, old) in undo {
                self.take(kind, &net);
                if let Some(old) = old {
                    self.put(kind, old);
                }
            }
            if let Err(undo_err) = enforcer.remove(kind, &new) {
                tracing::error!(error = %undo_err, "could not undo a kernel insert after a failed save");
            }
            return Err(e);
        }
        Ok(outcome)
    }

    /// Removes `nets` from `kind`. Every one must be listed; otherwise nothing changes.
    pub fn remove(
        &mut self,
        enforcer: &mut dyn Enforcer,
        kind: ListKind,
        nets: &[IpNet],
    ) -> Result<usize, String> {
        let mut unique: Vec<IpNet> = nets.to_vec();
        unique.sort();
        unique.dedup();
        if let Some(missing) = unique.iter().find(|n| !self.map(kind).contains_key(n)) {
            let hint = if self
                .map(kind)
                .keys()
                .any(|n| n.contains(&missing.addr()) && n != missing)
            {
                " (it is covered by a wider entry; remove that one)"
            } else {
                ""
            };
            return Err(format!(
                "{} is not in the {}{hint}",
                net::display(missing),
                kind.name()
            ));
        }
        enforcer.remove(kind, &unique)?;
        let removed: Vec<Entry> = unique.iter().filter_map(|n| self.take(kind, n)).collect();
        if let Err(e) = self.save() {
            for entry in removed {
                self.put(kind, entry);
            }
            if let Err(undo_err) = enforcer.insert(kind, &unique) {
                tracing::error!(error = %undo_err, "could not undo a kernel removal after a failed save");
            }
            return Err(e);
        }
        Ok(unique.len())
    }

    /// Removes every entry that expired by `now`; returns them. Kernel failures are logged and
    /// the entry is retried on the next call.
    pub fn expire(&mut self, enforcer: &mut dyn Enforcer, now: u64) -> Vec<(ListKind, Entry)> {
        let due: Vec<(u64, ListKind, IpNet)> = self
            .expiry
            .iter()
            .take_while(|(at, _, _)| *at <= now)
            .copied()
            .collect();
        if due.is_empty() {
            return Vec::new();
        }
        let mut gone = Vec::new();
        for kind in [ListKind::Block, ListKind::Allow] {
            let nets: Vec<IpNet> = due.iter().filter(|d| d.1 == kind).map(|d| d.2).collect();
            if nets.is_empty() {
                continue;
            }
            if let Err(e) = enforcer.remove(kind, &nets) {
                tracing::error!(error = %e, list = kind.name(), "could not remove expired entries from the kernel");
                continue;
            }
            gone.extend(
                nets.iter()
                    .filter_map(|n| self.take(kind, n))
                    .map(|e| (kind, e)),
            );
        }
        if let Err(e) = self.save() {
            // The file still holds them, but with an expiry in the past: a restart drops them.
            tracing::error!(error = %e, "could not save the lists after expiring entries");
        }
        gone
    }

    /// The soonest expiry, if any entry has a TTL.
    pub fn next_expiry(&self) -> Option<u64> {
        self.expiry.first().map(|e| e.0)
    }

    /// Sets (or with `None` clears) the stored rate-limit override and saves it.
    pub fn set_ratelimit(&mut self, rate: Option<RateConfig>) -> Result<(), String> {
        let old = std::mem::replace(&mut self.ratelimit, rate);
        if let Err(e) = self.save() {
            self.ratelimit = old;
            return Err(e);
        }
        Ok(())
    }

    /// Writes the state file atomically: a crash or power cut leaves the old or the new file,
    /// never a mix.
    pub fn save(&self) -> Result<(), String> {
        let mut block: Vec<&Entry> = self.block.values().collect();
        block.sort_by_key(|e| e.net);
        let mut allow: Vec<&Entry> = self.allow.values().collect();
        allow.sort_by_key(|e| e.net);
        #[derive(Serialize)]
        struct Out<'a> {
            version: u32,
            #[serde(skip_serializing_if = "Option::is_none")]
            ratelimit: Option<RateConfig>,
            block: Vec<&'a Entry>,
            allow: Vec<&'a Entry>,
        }
        let out = Out {
            version: STATE_VERSION,
            ratelimit: self.ratelimit,
            block,
            allow,
        };
        let mut bytes =
            serde_json::to_vec(&out).map_err(|e| format!("cannot encode state: {e}"))?;
        bytes.push(b'\n');
        write_atomically(&self.path, &bytes)
            .map_err(|e| format!("{}: cannot save state: {e}", self.path.display()))
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory: write, fsync,
/// rename over `path`, fsync the directory so the rename itself is durable.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the kernel would hold; fails on demand.
    #[derive(Default)]
    struct Recorder {
        held: BTreeSet<(ListKind, IpNet)>,
        fail: bool,
    }

    impl Enforcer for Recorder {
        fn insert(&mut self, kind: ListKind, nets: &[IpNet]) -> Result<(), String> {
            if self.fail {
                return Err("kernel says no".into());
            }
            self.held.extend(nets.iter().map(|n| (kind, *n)));
            Ok(())
        }
        fn remove(&mut self, kind: ListKind, nets: &[IpNet]) -> Result<(), String> {
            if self.fail {
                return Err("kernel says no".into());
            }
            for n in nets {
                self.held.remove(&(kind, *n));
            }
            Ok(())
        }
    }

    const CAPS: Capacities = Capacities {
        block4: 3,
        block6: 3,
        allow4: 3,
        allow6: 3,
    };

    fn entry(net: &str, expires: Option<u64>) -> Entry {
        Entry {
            net: net::parse_net(net).unwrap(),
            added: now_ms(),
            expires,
            reason: Some("test".into()),
            origin: "cli".into(),
        }
    }

    #[test]
    fn add_remove_persist_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut k = Recorder::default();
        let (mut lists, _) = Lists::load(dir.path(), CAPS).unwrap();
        let out = lists
            .add(
                &mut k,
                ListKind::Block,
                vec![entry("198.51.100.7", None), entry("2001:db8::/32", None)],
            )
            .unwrap();
        assert_eq!(
            out,
            AddOutcome {
                added: 2,
                updated: 0
            }
        );
        let out = lists
            .add(
                &mut k,
                ListKind::Block,
                vec![entry("198.51.100.7", Some(now_ms() + 60_000))],
            )
            .unwrap();
        assert_eq!(
            out,
            AddOutcome {
                added: 0,
                updated: 1
            }
        );
        assert_eq!(k.held.len(), 2);
        let (again, expired) = Lists::load(dir.path(), CAPS).unwrap();
        assert_eq!(expired, 0);
        assert_eq!(again.len(ListKind::Block), 2);
        assert!(again.next_expiry().is_some());
        lists
            .remove(
                &mut k,
                ListKind::Block,
                &[net::parse_net("198.51.100.7").unwrap()],
            )
            .unwrap();
        assert!(
            lists.next_expiry().is_none(),
            "expiry index keeps a removed entry"
        );
        let err = lists
            .remove(
                &mut k,
                ListKind::Block,
                &[net::parse_net("198.51.100.7").unwrap()],
            )
            .unwrap_err();
        assert!(err.contains("not in the blocklist"), "{err}");
        let (again, _) = Lists::load(dir.path(), CAPS).unwrap();
        assert_eq!(again.len(ListKind::Block), 1);
        assert_eq!(k.held.len(), 1);
    }

    #[test]
    fn full_list_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut k = Recorder::default();
        let (mut lists, _) = Lists::load(dir.path(), CAPS).unwrap();
        lists
            .add(
                &mut k,
                ListKind::Block,
                vec![entry("10.0.0.1", None), entry("10.0.0.2", None)],
            )
            .unwrap();
        let err = lists
            .add(
                &mut k,
                ListKind::Block,
                vec![entry("10.0.0.3", None), entry("10.0.0.4", None)],
            )
            .unwrap_err();
        assert!(
            err.contains("blocklist full") && err.contains("xdp.blocklist_v4_capacity"),
            "{err}"
        );
        assert_eq!(lists.len(ListKind::Block), 2);
        assert_eq!(k.held.len(), 2);
        // IPv6 has its own capacity; updates of present entries need no room.
        lists
            .add(
                &mut k,
                ListKind::Block,
                vec![entry("10.0.0.1", None), entry("2001:db8::1", None)],
            )
            .unwrap();
    }

    #[test]
    fn kernel_or_disk_failure_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut k = Recorder::default();
        let (mut lists, _) = Lists::load(dir.path(), CAPS).unwrap();
        lists
            .add(&mut k, ListKind::Allow, vec![entry("10.0.0.1", None)])
            .unwrap();
        k.fail = true;
        assert!(lists
            .add(&mut k, ListKind::Allow, vec![entry("10.0.0.2", None)])
            .is_err());
        assert!(lists
            .remove(
                &mut k,
                ListKind::Allow,
                &[net::parse_net("10.0.0.1").unwrap()]
            )
            .is_err());
        assert_eq!(lists.len(ListKind::Allow), 1);
        k.fail = false;
        // The disk fails: the directory is gone.
        let gone = dir.path().join("gone");
        let (mut lists, _) = Lists::load(&gone, CAPS).unwrap();
        let mut k = Recorder::default();
        assert!(lists
            .add(&mut k, ListKind::Block, vec![entry("10.0.0.2", None)])
            .is_err());
        assert_eq!(lists.len(ListKind::Block), 0);
        assert!(k.held.is_empty(), "kernel insert not undone");
    }

    #[test]
    fn expiry_and_reload_drop_expired() {
        let dir = tempfile::tempdir().unwrap();
        let mut k = Recorder::default();
        let (mut lists, _) = Lists::load(dir.path(), CAPS).unwrap();
        let now = now_ms();
        lists
            .add(
                &mut k,
                ListKind::Block,
                vec![
                    entry("10.0.0.1", Some(now + 100)),
                    entry("10.0.0.2", Some(now + 10_000)),
                ],
            )
            .unwrap();
        assert!(lists.expire(&mut k, now).is_empty());
        let gone = lists.expire(&mut k, now + 100);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].1.net, net::parse_net("10.0.0.1").unwrap());
        assert_eq!(k.held.len(), 1);
        // An entry that expired while the daemon was down is dropped at load.
        let (mut raw, _) = Lists::load(dir.path(), CAPS).unwrap();
        raw.put(ListKind::Block, entry("10.0.0.9", Some(1)));
        raw.save().unwrap();
        let (again, expired) = Lists::load(dir.path(), CAPS).unwrap();
        assert_eq!((again.len(ListKind::Block), expired), (1, 1));
    }

    #[test]
    fn corrupt_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "",
            "{",
            "{\"version\":2}",
            "{\"version\":1,\"block\":[{\"net\":\"10.0.0.1/8\",\"added\":0,\"origin\":\"x\"}]}",
            "{\"version\":1,\"extra\":1}",
        ] {
            fs::write(dir.path().join(STATE_FILE), bad).unwrap();
            assert!(Lists::load(dir.path(), CAPS).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn auto_entries_are_indexed_and_old_state_files_load() {
        let dir = tempfile::tempdir().unwrap();
        // A state file as the daemon wrote it before auto-bans existed.
        fs::write(
            dir.path().join(STATE_FILE),
            "{\"version\":1,\"block\":[{\"net\":\"198.51.100.0/24\",\"added\":1,\"reason\":\"x\",\"origin\":\"cli\"}],\"allow\":[]}\n",
        )
        .unwrap();
        let mut k = Recorder::default();
        let (mut lists, _) = Lists::load(dir.path(), CAPS).unwrap();
        assert_eq!((lists.len(ListKind::Block), lists.auto_count()), (1, 0));
        let generation = lists.generation();
        let mut auto = entry("203.0.113.0/24", Some(now_ms() + 60_000));
        auto.origin = format!("{AUTO_ORIGIN}bad-auth");
        lists.add(&mut k, ListKind::Block, vec![auto]).unwrap();
        assert!(lists.generation() > generation);
        assert_eq!(lists.auto_count(), 1);
        assert_eq!(
            lists.auto_entries().next().and_then(Entry::auto_rule),
            Some("bad-auth")
        );
        let addr: IpAddr = "203.0.113.9".parse().unwrap();
        let found = lists.covering(ListKind::Block, addr, 32).unwrap();
        assert_eq!(found.net.to_string(), "203.0.113.0/24");
        assert!(lists.covering(ListKind::Block, addr, 23).is_none());
        assert!(lists.covering(ListKind::Allow, addr, 32).is_none());
        // Persisted with its origin; a manual re-add takes it over.
        let (again, _) = Lists::load(dir.path(), CAPS).unwrap();
        assert_eq!(again.auto_count(), 1);
        lists
            .add(&mut k, ListKind::Block, vec![entry("203.0.113.0/24", None)])
            .unwrap();
        assert_eq!(lists.auto_count(), 0);
        lists
            .remove(
                &mut k,
                ListKind::Block,
                &[net::parse_net("203.0.113.0/24").unwrap()],
            )
            .unwrap();
        assert_eq!(lists.auto_entries().count(), 0);
    }

    #[test]
    fn reasons_are_checked() {
        assert!(check_reason("ssh brute force").is_ok());
        assert!(check_reason(&"x".repeat(MAX_REASON + 1)).is_err());
        assert!(check_reason("a\nb").is_err());
    }
}
