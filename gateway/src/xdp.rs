//! The XDP layer from userspace: loading the program with map sizes from the config, attaching
//! it, and keeping its maps in step with the lists and the rate limit. With pinning
//! ([`Kernel::load_pinned`]) the link and maps outlive the daemon ([`pin`]) and the next daemon
//! adopts them ([`adopt`]).

mod adopt;
pub mod pin;

use std::{
    collections::HashMap as StdHashMap,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use gateway_common::{
    maps as names,
    maps::{
        events::EventBudget,
        lists::{self, Key4, Key6, ListBucket},
        RateBucket, RATE_WAYS,
    },
    Counter, Settings, Verdict,
};
use ipnet::IpNet;

use crate::{
    config::{XdpConfig, XdpModeConfig},
    lists::{Enforcer, ListKind},
};

/// The XDP object file, built by build.rs.
pub static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-xdp"));
/// The program's function name.
pub const PROGRAM_NAME: &str = "gateway";

/// A key of either list map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ListKey {
    V4(Key4),
    V6(Key6),
}

impl ListKey {
    /// The keys a listed network is stored under (gateway_common::maps::lists): itself when
    /// its length is a target length, else the networks of the next target length that make
    /// it up (up to 8 for IPv4, 128 for IPv6).
    fn expand(net: &IpNet) -> impl Iterator<Item = ListKey> {
        let len = u32::from(net.prefix_len());
        let target = match net {
            IpNet::V4(_) => lists::target4(len),
            IpNet::V6(_) => lists::target6(len),
        };
        let count = 1u32 << (target - len);
        let net = *net;
        (0..count).map(move |i| match net {
            IpNet::V4(n) => {
                let step = 1u32.checked_shl(32 - target).unwrap_or(0);
                let addr = u32::from(n.network()).wrapping_add(i.wrapping_mul(step));
                ListKey::V4(Key4 {
                    len: target,
                    addr: addr.to_be_bytes(),
                })
            }
            IpNet::V6(n) => {
                let step = 1u128.checked_shl(128 - target).unwrap_or(0);
                let addr = u128::from(n.network()).wrapping_add(u128::from(i).wrapping_mul(step));
                ListKey::V6(Key6 {
                    len: target,
                    addr: addr.to_be_bytes(),
                })
            }
        })
    }

    fn fingerprint(&self, seed: u64) -> u64 {
        match self {
            ListKey::V4(k) => k.fingerprint(seed),
            ListKey::V6(k) => k.fingerprint(seed),
        }
    }

    /// Index into [`Tables::per_target`]: IPv4 targets first, then IPv6.
    fn target_index(&self) -> usize {
        match self {
            ListKey::V4(k) => (k.len / lists::STRIDE4) as usize,
            ListKey::V6(k) => V4_TARGETS + (k.len / lists::STRIDE6) as usize,
        }
    }
}

const V4_TARGETS: usize = 32 / lists::STRIDE4 as usize + 1;
const V6_TARGETS: usize = 128 / lists::STRIDE6 as usize + 1;

/// How many listed networks of each list are stored under one key: at most one per length
/// between the previous target length and this one, so a `u8` never overflows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Refs {
    block: u8,
    allow: u8,
}

impl Refs {
    fn flags(self) -> u32 {
        let block = if self.block > 0 { lists::BLOCK } else { 0 };
        let allow = if self.allow > 0 { lists::ALLOW } else { 0 };
        block | allow
    }

    fn count(&mut self, kind: ListKind) -> &mut u8 {
        match kind {
            ListKind::Block => &mut self.block,
            ListKind::Allow => &mut self.allow,
        }
    }
}

/// Where a key is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Slot `1` of bucket `0` of the list table.
    Slot(u32, usize),
    /// The family's overflow map; bucket `0` counts it.
    Overflow(u32),
}

/// The kernel's list table and overflow maps, and the userspace bookkeeping they are derived
/// from, so that removing one of two networks stored under the same key keeps the other.
struct Tables {
    table: Array<MapData, ListBucket>,
    list4: HashMap<MapData, Key4, u32>,
    list6: HashMap<MapData, Key6, u32>,
    keys: StdHashMap<ListKey, (Refs, Place)>,
    /// The table's buckets that are not empty, as the kernel holds them.
    buckets: StdHashMap<u32, ListBucket>,
    /// Keys per target length.
    per_target: [usize; V4_TARGETS + V6_TARGETS],
    seed: u64,
    buckets_mask: u32,
}

impl Tables {
    /// Moves `key` from `old` to `new` references. On error nothing changed.
    fn set(&mut self, key: ListKey, old: Refs, new: Refs) -> Result<(), MapError> {
        let (was, now) = (old.flags(), new.flags());
        let place = match self.keys.get(&key) {
            Some((_, place)) => *place,
            None => self.place(key),
        };
        if was != now {
            self.write(key, place, was, now)?;
        }
        if was == 0 && now != 0 {
            self.per_target[key.target_index()] += 1;
        } else if was != 0 && now == 0 {
            self.per_target[key.target_index()] -= 1;
        }
        if now == 0 {
            self.keys.remove(&key);
        } else {
            self.keys.insert(key, (new, place));
        }
        Ok(())
    }

    /// Where a new key goes: a free slot of its bucket, else the overflow map.
    fn place(&self, key: ListKey) -> Place {
        let fingerprint = key.fingerprint(self.seed);
        let index = lists::bucket(fingerprint, self.buckets_mask);
        let bucket = self.buckets.get(&index).copied().unwrap_or_default();
        // Fingerprint 0 marks an empty slot, so such a key (one IPv4 key per seed, if any)
        // overflows.
        match bucket.fingerprints.iter().position(|f| *f == 0) {
            Some(slot) if fingerprint != 0 => Place::Slot(index, slot),
            _ => Place::Overflow(index),
        }
    }

    /// Writes `key`'s new flags (`now`, 0 to remove it) to the kernel.
    fn write(&mut self, key: ListKey, place: Place, was: u32, now: u32) -> Result<(), MapError> {
        match place {
            Place::Slot(index, slot) => {
                let mut bucket = self.buckets.get(&index).copied().unwrap_or_default();
                bucket.fingerprints[slot] = if now == 0 {
                    0
                } else {
                    key.fingerprint(self.seed)
                };
                bucket.flags[slot] = now;
                self.write_bucket(index, bucket)
            }
            Place::Overflow(index) => {
                // The overflow map holds the key before the bucket sends lookups there, and
                // loses it only after.
                let mut bucket = self.buckets.get(&index).copied().unwrap_or_default();
                if now != 0 {
                    match key {
                        ListKey::V4(k) => self.list4.insert(k, now, 0),
                        ListKey::V6(k) => self.list6.insert(k, now, 0),
                    }?;
                    if was == 0 {
                        bucket.overflow += 1;
                        if let Err(e) = self.write_bucket(index, bucket) {
                            let _ = self.remove_overflow(key);
                            return Err(e);
                        }
                    }
                    Ok(())
                } else {
                    self.remove_overflow(key)?;
                    bucket.overflow = bucket.overflow.saturating_sub(1);
                    self.write_bucket(index, bucket)
                }
            }
        }
    }

    fn remove_overflow(&mut self, key: ListKey) -> Result<(), MapError> {
        let result = match key {
            ListKey::V4(k) => self.list4.remove(&k),
            ListKey::V6(k) => self.list6.remove(&k),
        };
        match result {
            // Already gone: removing is idempotent.
            Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            other => other,
        }
    }

    fn write_bucket(&mut self, index: u32, bucket: ListBucket) -> Result<(), MapError> {
        self.table.set(index, bucket, 0)?;
        if bucket == ListBucket::default() {
            self.buckets.remove(&index);
        } else {
            self.buckets.insert(index, bucket);
        }
        Ok(())
    }

    /// The `targets4` and `targets6` bits of the target lengths that hold keys.
    fn targets(&self) -> (u32, u32) {
        let bits = |counts: &[usize]| {
            counts
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .fold(0, |acc, (i, _)| acc | 1 << i)
        };
        (
            bits(&self.per_target[..V4_TARGETS]),
            bits(&self.per_target[V4_TARGETS..]),
        )
    }

    /// Counts every network of `nets` in (`add`) or out of list `kind`, all or nothing.
    fn change(&mut self, kind: ListKind, nets: &[IpNet], add: bool) -> Result<(), String> {
        let mut journal: Vec<(ListKey, Refs)> = Vec::new();
        let mut failure = None;
        'nets: for net in nets {
            for key in ListKey::expand(net) {
                let old = self.keys.get(&key).map(|(r, _)| *r).unwrap_or_default();
                let mut new = old;
                let count = new.count(kind);
                *count = if add {
                    count.saturating_add(1)
                } else {
                    count.saturating_sub(1)
                };
                if let Err(e) = self.set(key, old, new) {
                    let verb = if add { "insert of" } else { "removal of" };
                    failure = Some(map_error(&format!("{} {verb} {net}", kind.name()), e));
                    break 'nets;
                }
                journal.push((key, old));
            }
        }
        let Some(failure) = failure else {
            return Ok(());
        };
        for (key, old) in journal.into_iter().rev() {
            let current = self.keys.get(&key).map(|(r, _)| *r).unwrap_or_default();
            let _ = self.set(key, current, old);
        }
        Err(failure)
    }
}

/// Forwards the XDP program's log records into our log. `xdp.log_level` already chose which
/// records the program emits, so they are logged at info (warn and error as such) under the
/// target `gateway::kernel`, visible at the default log level.
pub struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = record.level();
        match level {
            log::Level::Error => tracing::error!(target: "gateway::kernel", "{}", record.args()),
            log::Level::Warn => tracing::warn!(target: "gateway::kernel", "{}", record.args()),
            _ => {
                tracing::info!(target: "gateway::kernel", kernel_level = %level, "{}", record.args())
            }
        }
    }

    fn flush(&self) {}
}

/// The attach mode actually obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Skb,
}

impl AttachedMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachedMode::Native => "native",
            AttachedMode::Skb => "skb",
        }
    }
}

/// How the daemon holds the link it attached.
enum LinkHold {
    /// Owned by the program: detached when the daemon stops.
    Owned(XdpLinkId),
    /// Pinned at this path: stays attached until `gateway detach`.
    Pinned(PathBuf),
}

/// The pin directory of a pinned [`Kernel`], and what was found there at load.
struct Pins {
    dir: PathBuf,
    /// The regular maps of the program, pinned under their names.
    maps: Vec<String>,
    /// The kernel's list maps as they were when adopted, until [`Kernel::fill`] reconciles
    /// them; `None` for maps created by this load.
    snapshot: Option<adopt::Snapshot>,
    /// The map pins were created by this load: removed again if it never attaches, so a daemon
    /// that fails to start leaves no pinned maps (and their memory) behind.
    created: bool,
}

/// The loaded XDP program and its maps.
pub struct Kernel {
    ebpf: Ebpf,
    tables: Tables,
    settings_map: Array<MapData, Settings>,
    verdicts: PerCpuArray<MapData, Counter>,
    /// What the SETTINGS map holds.
    settings: Settings,
    /// Interface, mode and link while attached.
    attached: Option<(String, AttachedMode, LinkHold)>,
    logger: Option<aya_log::EbpfLogger<KernelLog>>,
    pins: Option<Pins>,
}

fn map_error(what: &str, e: MapError) -> String {
    match &e {
        MapError::SyscallError(s)
            if matches!(
                s.io_error.raw_os_error(),
                Some(libc::E2BIG | libc::ENOSPC | libc::ENOMEM)
            ) =>
        {
            format!(
                "{what}: the kernel map is full or out of memory ({})",
                s.io_error
            )
        }
        _ => format!("{what}: {e}"),
    }
}

impl Kernel {
    /// Loads (but does not attach) the program with map sizes from `config`. Needs CAP_BPF
    /// (root).
    pub fn load(config: &XdpConfig) -> Result<Kernel, String> {
        Kernel::load_sized(config, Sizes::of(config), None)
    }

    /// Loads the program on the maps pinned under `config.pin_dir`, pinning them first when
    /// none are (bpffs is mounted at /sys/fs/bpf when missing). Pinned maps whose sizes or
    /// layout do not fit this program and config are replaced by new ones, said in the log;
    /// the program attached until [`Kernel::attach`] keeps its old maps until then. `rate` is
    /// written to SETTINGS at once (the rate limit in force, so the running program never
    /// sees another). Call [`Kernel::fill`] with the lists, then [`Kernel::attach`].
    pub fn load_pinned(config: &XdpConfig, rate: Settings) -> Result<Kernel, String> {
        Kernel::load_pinned_sized(config, Sizes::of(config), rate)
    }

    /// [`Kernel::load_pinned`] with a list table of `buckets` buckets (a power of two), as
    /// [`Kernel::load_with_list_buckets`].
    #[doc(hidden)]
    pub fn load_pinned_with_list_buckets(
        config: &XdpConfig,
        rate: Settings,
        buckets: u32,
    ) -> Result<Kernel, String> {
        if !buckets.is_power_of_two() {
            return Err(format!("{buckets} buckets: not a power of two"));
        }
        let sizes = Sizes {
            list_buckets: buckets,
            ..Sizes::of(config)
        };
        Kernel::load_pinned_sized(config, sizes, rate)
    }

    fn load_pinned_sized(
        config: &XdpConfig,
        sizes: Sizes,
        rate: Settings,
    ) -> Result<Kernel, String> {
        let dir = config.pin_dir.as_path();
        let mounted = pin::prepare_dir(dir).map_err(|e| error_chain(&e))?;
        if mounted {
            tracing::info!(path = pin::BPFFS, "bpffs was not mounted; mounted it");
            if pin::private_mount_namespace() == Some(true) {
                tracing::warn!(
                    path = pin::BPFFS,
                    "this bpffs is mounted in a private mount namespace: the pins end with it, so the XDP program is detached when the daemon stops; mount bpffs at {} on the host (systemd does at boot) to keep enforcing across restarts",
                    pin::BPFFS
                );
            }
        }
        let mut kernel = Kernel::load_sized(config, sizes, Some((dir, rate)))?;
        if let Some(pins) = kernel.pins.as_ref() {
            tracing::info!(
                dir = %dir.display(),
                maps = pins.maps.len(),
                adopted = pins.snapshot.is_some(),
                "XDP maps pinned"
            );
        }
        kernel.set_rate(rate)?;
        Ok(kernel)
    }

    /// [`Kernel::load`] with a list table of `buckets` buckets (a power of two), whatever the
    /// capacities: tests use a tiny table to send most keys to the overflow maps.
    #[doc(hidden)]
    pub fn load_with_list_buckets(config: &XdpConfig, buckets: u32) -> Result<Kernel, String> {
        if !buckets.is_power_of_two() {
            return Err(format!("{buckets} buckets: not a power of two"));
        }
        Kernel::load_sized(
            config,
            Sizes {
                list_buckets: buckets,
                ..Sizes::of(config)
            },
            None,
        )
    }

    fn load_sized(
        config: &XdpConfig,
        sizes: Sizes,
        pinned: Option<(&Path, Settings)>,
    ) -> Result<Kernel, String> {
        let level = config.log_level.aya_level();
        let mut loader = EbpfLoader::new();
        for (name, max_entries) in sizes.by_map() {
            loader.map_max_entries(name, max_entries);
        }
        loader.override_global(aya_log::LEVEL, &level, false);
        let object;
        let mut plan = None;
        let mut map_names = Vec::new();
        if let Some((dir, _)) = pinned {
            object = aya_obj::Object::parse(PROGRAM)
                .map_err(|e| format!("cannot parse the XDP object: {e}"))?;
            let found = pin::plan_maps(dir, &object, &sizes.by_map(), CORE_MAPS)
                .map_err(|e| error_chain(&e))?;
            map_names = pin::map_names(&object);
            if let pin::MapPlan::Recreate(reasons) = &found {
                // The program attached now keeps its maps (it holds them) until attach()
                // swaps this one in; the pins are replaced now, so a crash from here on
                // leaves pins this config fits, which the next start fills from the state.
                tracing::warn!(
                    dir = %dir.display(),
                    reasons = %reasons.join("; "),
                    "the pinned XDP maps do not fit this program and config: creating new maps and refilling them from the state file (rate-limit state and verdict counters start over); the attached program keeps enforcing on the old maps until the new program replaces it"
                );
                pin::remove_map_pins(dir, &[]).map_err(|e| error_chain(&e))?;
            }
            for name in &map_names {
                loader.map_pin_path(name.as_str(), dir.join(name));
            }
            plan = Some(found);
        }
        let mut ebpf = loader.load(PROGRAM).map_err(|e| {
            let hint = if unsafe { libc::geteuid() } != 0 {
                " (are you root?)"
            } else {
                ""
            };
            format!("cannot load the XDP program{hint}: {e}")
        })?;
        // Kernel-side log records reach our log (and tracing through its log bridge).
        let logger = if level > 0 {
            match aya_log::EbpfLogger::init_with_logger(&mut ebpf, KernelLog) {
                Ok(logger) => Some(logger),
                Err(e) => {
                    tracing::warn!(error = %e, "kernel-side logging unavailable");
                    None
                }
            }
        } else {
            None
        };
        fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
            ebpf: &mut Ebpf,
            name: &str,
        ) -> Result<T, String> {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| format!("map {name} missing from the XDP object"))?;
            T::try_from(map).map_err(|e| format!("map {name}: {e}"))
        }
        let settings_map: Array<MapData, Settings> = take(&mut ebpf, names::SETTINGS)?;
        let adopting = plan == Some(pin::MapPlan::Adopt);
        // Adopted maps keep the seed their keys were stored with, and the target lengths the
        // running program looks up until fill() has reconciled the lists.
        let previous = if adopting {
            settings_map
                .get(&0, 0)
                .map_err(|e| map_error("reading the pinned SETTINGS", e))?
        } else {
            Settings::default()
        };
        let initialised = previous.seed != 0
            && previous.list_buckets_mask == sizes.list_buckets - 1
            && previous.rate_buckets_mask == sizes.rate_buckets - 1;
        let seed = if initialised {
            previous.seed
        } else {
            random_seed()?
        };
        let tables = Tables {
            table: take(&mut ebpf, names::LIST_TABLE)?,
            list4: take(&mut ebpf, names::LIST4)?,
            list6: take(&mut ebpf, names::LIST6)?,
            keys: StdHashMap::new(),
            buckets: StdHashMap::new(),
            per_target: [0; V4_TARGETS + V6_TARGETS],
            seed,
            buckets_mask: sizes.list_buckets - 1,
        };
        let verdicts = take(&mut ebpf, names::VERDICTS)?;
        let pins = match pinned {
            Some((dir, _)) => Some(Pins {
                dir: dir.to_path_buf(),
                maps: map_names,
                created: !adopting,
                snapshot: if adopting {
                    Some(adopt::Snapshot::read(
                        &tables,
                        &dir.join(names::LIST_TABLE),
                    )?)
                } else {
                    None
                },
            }),
            None => None,
        };
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or("program `gateway` missing from the XDP object")?
            .try_into()
            .map_err(|e| format!("program `gateway`: {e}"))?;
        program
            .load()
            .map_err(|e| format!("the kernel refused the XDP program: {e}"))?;
        let mut kernel = Kernel {
            ebpf,
            tables,
            settings_map,
            verdicts,
            settings: Settings {
                tick_ns: tick_ns()?,
                seed,
                list_buckets_mask: sizes.list_buckets - 1,
                rate_buckets_mask: sizes.rate_buckets - 1,
                event_interval_ns: if config.events.enabled {
                    EVENT_INTERVAL_NS
                } else {
                    0
                },
                events_per_cpu: config.events.max_per_second,
                event_slots_mask: sizes.event_slots - 1,
                targets4: if initialised { previous.targets4 } else { 0 },
                targets6: if initialised { previous.targets6 } else { 0 },
                ..Settings::default()
            },
            attached: None,
            logger,
            pins,
        };
        let rate = match pinned {
            Some((_, rate)) => rate,
            None => config.ratelimit.settings()?,
        };
        kernel.set_rate(rate)?;
        Ok(kernel)
    }

    /// The loaded program, e.g. for BPF_PROG_TEST_RUN.
    pub fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .unwrap_or_else(|| unreachable!("checked in Kernel::load"))
    }

    /// Attaches to `interface`. `Auto` tries native mode first and falls back to skb mode.
    ///
    /// Pinned ([`Kernel::load_pinned`]): a link pinned for this interface is kept and this
    /// program replaces the one it runs in one atomic step (BPF_LINK_UPDATE), so no packet
    /// meets an interface without XDP; its mode cannot change that way, so a config that asks
    /// for the other mode is refused. A link pinned for another interface (or one that is gone)
    /// is detached once the new one is attached and pinned.
    pub fn attach(&mut self, interface: &str, mode: XdpModeConfig) -> Result<AttachedMode, String> {
        let Some(dir) = self.pins.as_ref().map(|p| p.dir.clone()) else {
            let (got, link) = self.attach_new(interface, mode)?;
            self.attached = Some((interface.to_string(), got, LinkHold::Owned(link)));
            return Ok(got);
        };
        let found = pin::find_link(&dir).map_err(|e| error_chain(&e))?;
        let ifindex = interface_index(interface)?;
        let got = match found {
            Some(link) if link.ifindex == ifindex => {
                let wanted = match mode {
                    XdpModeConfig::Auto => None,
                    XdpModeConfig::Native => Some(AttachedMode::Native),
                    XdpModeConfig::Skb => Some(AttachedMode::Skb),
                };
                if wanted.is_some_and(|w| w != link.mode) {
                    return Err(format!(
                        "the pinned XDP link on {interface} runs in {} mode but xdp.mode asks for {} mode; the mode cannot change without a moment with no XDP on {interface}: run `gateway detach` first (or set xdp.mode = \"auto\" to keep the pinned one)",
                        link.mode.name(),
                        wanted.map(AttachedMode::name).unwrap_or("?"),
                    ));
                }
                let fd_link: FdLink = PinnedLink::from_pin(&link.path)
                    .map_err(|e| format!("{}: {}", link.path.display(), error_chain(&e)))?
                    .into();
                let xdp_link = XdpLink::try_from(fd_link)
                    .map_err(|e| format!("{}: {}", link.path.display(), error_chain(&e)))?;
                self.program_mut().attach_to_link(xdp_link).map_err(|e| {
                    format!(
                        "cannot replace the program of the pinned XDP link on {interface}: {}",
                        error_chain(&e)
                    )
                })?;
                tracing::info!(interface, mode = link.mode.name(), link = %link.path.display(), "adopted the pinned XDP link: the new program replaced the old one atomically");
                self.attached = Some((
                    interface.to_string(),
                    link.mode,
                    LinkHold::Pinned(link.path),
                ));
                link.mode
            }
            other => {
                let (got, id) = self.attach_new(interface, mode)?;
                let path = dir.join(pin::link_name(got));
                let staged = dir.join(pin::staged_link_name(pin::link_name(got)));
                let cannot = |e: &dyn std::error::Error| {
                    format!(
                        "cannot pin the XDP link at {}: {}",
                        staged.display(),
                        error_chain(e)
                    )
                };
                let link = self.program_mut().take_link(id).map_err(|e| cannot(&e))?;
                let fd_link = FdLink::try_from(link).map_err(|e| cannot(&e))?;
                let _ = std::fs::remove_file(&staged);
                let pinned = fd_link.pin(&staged).map_err(|e| cannot(&e))?;
                if let Some(old) = other {
                    let gone = pin::detach_link(&old.path).map_err(|e| error_chain(&e))?;
                    tracing::warn!(interface, old_ifindex = gone, "the pinned XDP link was on another interface (or one that is gone): detached it from there");
                }
                if let Err(e) = std::fs::rename(&staged, &path) {
                    // Still attached through `staged`, which the next start moves into
                    // place and `gateway detach` removes.
                    return Err(format!(
                        "cannot rename the pinned link {} to {}: {e}",
                        staged.display(),
                        path.display()
                    ));
                }
                // The link's fd closes here; the pin keeps it attached.
                drop(pinned);
                self.attached = Some((interface.to_string(), got, LinkHold::Pinned(path)));
                got
            }
        };
        // Pins of maps this program no longer has, and a link staged by a crashed start.
        let keep = self
            .pins
            .as_ref()
            .map(|p| p.maps.clone())
            .unwrap_or_default();
        match pin::remove_map_pins(&dir, &keep) {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, dir = %dir.display(), "removed stale pins"),
            Err(e) => tracing::warn!(error = %error_chain(&e), "cannot remove stale pins"),
        }
        Ok(got)
    }

    /// Attaches a new link to `interface`, owned by the program.
    fn attach_new(
        &mut self,
        interface: &str,
        mode: XdpModeConfig,
    ) -> Result<(AttachedMode, XdpLinkId), String> {
        let program = self.program_mut();
        let native = |p: &mut Xdp| {
            p.attach(interface, XdpMode::Driver)
                .map(|id| (AttachedMode::Native, id))
        };
        let skb = |p: &mut Xdp| {
            p.attach(interface, XdpMode::Skb)
                .map(|id| (AttachedMode::Skb, id))
        };
        let explain = |e: aya::programs::ProgramError| {
            let text = error_chain(&e);
            if text.contains("File exists") || text.contains("Device or resource busy") {
                format!("{text} (another XDP program is attached to {interface}; detach it first)")
            } else {
                text
            }
        };
        let got = match mode {
            XdpModeConfig::Native => native(program).map_err(|e| {
                format!(
                    "cannot attach to {interface} in native mode: {}",
                    explain(e)
                )
            })?,
            XdpModeConfig::Skb => skb(program)
                .map_err(|e| format!("cannot attach to {interface} in skb mode: {}", explain(e)))?,
            XdpModeConfig::Auto => {
                match native(program) {
                    Ok(got) => got,
                    Err(native_err) => {
                        let native_err = explain(native_err);
                        if native_err.contains("another XDP program")
                            || native_err.contains("unknown network interface")
                        {
                            return Err(format!("cannot attach to {interface}: {native_err}"));
                        }
                        tracing::warn!(interface, error = %native_err, "native XDP unavailable; falling back to skb (generic) mode");
                        skb(program).map_err(|e| {
                        format!("cannot attach to {interface}: native mode: {native_err}; skb mode: {}", explain(e))
                    })?
                    }
                }
            }
        };
        Ok(got)
    }

    /// Where the program is attached, if it is.
    pub fn attached(&self) -> Option<(&str, AttachedMode)> {
        self.attached.as_ref().map(|(i, m, _)| (i.as_str(), *m))
    }

    /// Detaches from the interface. Pinned, the link is detached explicitly and every pin
    /// removed, so the program and the maps go once the daemon lets go of them. Dropping the
    /// Kernel detaches only a link that is not pinned.
    pub fn detach(&mut self) -> Result<String, String> {
        match self.attached.take() {
            Some((interface, _, LinkHold::Owned(link))) => {
                self.program_mut()
                    .detach(link)
                    .map_err(|e| format!("detach from {interface}: {}", error_chain(&e)))?;
                Ok(format!("XDP detached from {interface}"))
            }
            attached => {
                let Some(pins) = self.pins.as_ref() else {
                    return Ok("XDP was not attached".into());
                };
                let done = pin::detach_dir(&pins.dir).map_err(|e| error_chain(&e))?;
                Ok(match attached {
                    Some((interface, mode, _)) => format!(
                        "XDP detached from {interface} ({} mode); {} map pins and {} removed",
                        mode.name(),
                        done.maps,
                        pins.dir.display()
                    ),
                    None => done.describe(&pins.dir),
                })
            }
        }
    }

    /// The pin of the link, when it is pinned.
    pub fn link_pin(&self) -> Option<&Path> {
        match &self.attached {
            Some((_, _, LinkHold::Pinned(path))) => Some(path),
            _ => None,
        }
    }

    /// Keeps the map pins of this load even if it never attaches (tests that adopt maps in
    /// process, without an interface).
    #[doc(hidden)]
    pub fn keep_pins(&mut self) {
        if let Some(pins) = self.pins.as_mut() {
            pins.created = false;
        }
    }

    /// The pin directory, when the link and maps are pinned.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_ref().map(|p| p.dir.as_path())
    }

    /// Puts the lists into the maps: plain inserts into new maps; into adopted maps, a
    /// reconciliation that keeps what the lists want, adds what is missing and removes the
    /// rest (module [`adopt`]), so the running program never misses a listed key. Returns a
    /// line for the log.
    pub fn fill(&mut self, allow: &[IpNet], block: &[IpNet]) -> Result<String, String> {
        let snapshot = self.pins.as_mut().and_then(|p| p.snapshot.take());
        let Some(snapshot) = snapshot else {
            self.insert(ListKind::Allow, allow)?;
            self.insert(ListKind::Block, block)?;
            return Ok(format!(
                "{} allowlist and {} blocklist entries loaded into new maps",
                allow.len(),
                block.len()
            ));
        };
        let done = self.tables.adopt(snapshot, allow, block)?;
        self.sync_targets()?;
        Ok(format!(
            "pinned maps reconciled with the state file: {} keys kept, {} corrected, {} added, {} stale removed",
            done.kept, done.corrected, done.added, done.removed
        ))
    }

    /// Drains kernel-side log records into our log.
    pub fn flush_logs(&mut self) {
        if let Some(logger) = self.logger.as_mut() {
            logger.flush();
        }
    }

    /// The file descriptor that becomes readable when kernel log records wait.
    pub fn log_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd as _;
        self.logger.as_ref().map(|l| l.as_fd())
    }

    /// Sets the rate limit: the rate fields of `rate` (gateway_common's `Settings::rate`).
    /// Takes effect on the next packet.
    pub fn set_rate(&mut self, rate: Settings) -> Result<(), String> {
        self.write_settings(Settings {
            interval_ns: rate.interval_ns,
            burst_ns: rate.burst_ns,
            prefix4: rate.prefix4,
            prefix6: rate.prefix6,
            ..self.settings
        })
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    fn write_settings(&mut self, new: Settings) -> Result<(), String> {
        self.settings_map
            .set(0, new, 0)
            .map_err(|e| map_error("SETTINGS", e))?;
        self.settings = new;
        Ok(())
    }

    /// How many list keys the kernel holds in the table and how many in the overflow maps.
    pub fn list_keys(&self) -> (usize, usize) {
        let overflowed = self
            .tables
            .keys
            .values()
            .filter(|(_, place)| matches!(place, Place::Overflow(_)))
            .count();
        (self.tables.keys.len() - overflowed, overflowed)
    }

    /// How many sources the rate limiter tracks now: one read per bucket, so not for hot
    /// paths.
    pub fn tracked_sources(&self) -> Result<usize, String> {
        let map = self
            .ebpf
            .map(names::RATE_STATE)
            .ok_or_else(|| format!("map {} missing", names::RATE_STATE))?;
        let table: Array<&MapData, RateBucket> =
            Array::try_from(map).map_err(|e| map_error(names::RATE_STATE, e))?;
        let mut tracked = 0;
        for bucket in table.iter() {
            let bucket = bucket.map_err(|e| map_error(names::RATE_STATE, e))?;
            tracked += bucket.slots.iter().filter(|s| s.tat != 0).count();
        }
        Ok(tracked)
    }

    /// The verdict counters, summed over CPUs, indexed by [`Verdict`].
    pub fn counters(&self) -> Result<[Counter; Verdict::COUNT as usize], String> {
        let mut out = [Counter::default(); Verdict::COUNT as usize];
        for verdict in Verdict::ALL {
            let per_cpu = self
                .verdicts
                .get(&(verdict as u32), 0)
                .map_err(|e| map_error("VERDICTS", e))?;
            for c in per_cpu.iter() {
                out[verdict as usize].packets += c.packets;
                out[verdict as usize].bytes += c.bytes;
            }
        }
        Ok(out)
    }

    /// Takes the drop-event ring buffer, for one reader; `None` when events are off (or it was
    /// taken already).
    pub fn take_events(&mut self) -> Result<Option<RingBuf<MapData>>, String> {
        if self.settings.event_interval_ns == 0 {
            return Ok(None);
        }
        let Some(map) = self.ebpf.take_map(names::EVENTS) else {
            return Ok(None);
        };
        RingBuf::try_from(map)
            .map(Some)
            .map_err(|e| map_error(names::EVENTS, e))
    }

    /// The drop events not sent, summed over CPUs: `suppressed` (budget spent) and `lost`
    /// (ring buffer full); the other fields are zero.
    pub fn event_counters(&self) -> Result<EventBudget, String> {
        let map = self
            .ebpf
            .map(names::EVENT_BUDGET)
            .ok_or_else(|| format!("map {} missing", names::EVENT_BUDGET))?;
        let budgets: PerCpuArray<&MapData, EventBudget> =
            PerCpuArray::try_from(map).map_err(|e| map_error(names::EVENT_BUDGET, e))?;
        let per_cpu = budgets
            .get(&0, 0)
            .map_err(|e| map_error(names::EVENT_BUDGET, e))?;
        let mut sum = EventBudget::default();
        for b in per_cpu.iter() {
            // `sent` restarts every second; the daemon counts what it receives instead.
            sum.suppressed += b.suppressed;
            sum.lost += b.lost;
        }
        Ok(sum)
    }

    /// Sets the `targets4`/`targets6` bits of the target lengths that hold keys.
    fn sync_targets(&mut self) -> Result<(), String> {
        let (targets4, targets6) = self.tables.targets();
        if (targets4, targets6) != (self.settings.targets4, self.settings.targets6) {
            self.write_settings(Settings {
                targets4,
                targets6,
                ..self.settings
            })?;
        }
        Ok(())
    }

    fn change(&mut self, kind: ListKind, nets: &[IpNet], add: bool) -> Result<(), String> {
        self.tables.change(kind, nets, add)?;
        if let Err(e) = self.sync_targets() {
            let _ = self.tables.change(kind, nets, !add);
            return Err(e);
        }
        Ok(())
    }
}

impl Enforcer for Kernel {
    fn insert(&mut self, kind: ListKind, nets: &[IpNet]) -> Result<(), String> {
        self.change(kind, nets, true)
    }

    fn remove(&mut self, kind: ListKind, nets: &[IpNet]) -> Result<(), String> {
        self.change(kind, nets, false)
    }
}

/// At most one drop event per source per this many nanoseconds.
const EVENT_INTERVAL_NS: u64 = 1_000_000_000;
/// The maps whose contents depend on each other (the seed and table sizes in SETTINGS, the
/// keys in the tables): adopted all together or created all anew.
const CORE_MAPS: &[&str] = &[
    names::LIST_TABLE,
    names::LIST4,
    names::LIST6,
    names::RATE_STATE,
    names::SETTINGS,
    names::EVENT_STATE,
];

/// Map sizes derived from the config.
struct Sizes {
    list_buckets: u32,
    list4: u32,
    list6: u32,
    rate_buckets: u32,
    event_slots: u32,
}

impl Sizes {
    /// max_entries by map name, as the loader sets them.
    fn by_map(&self) -> [(&'static str, u32); 5] {
        [
            (names::LIST_TABLE, self.list_buckets),
            (names::LIST4, self.list4),
            (names::LIST6, self.list6),
            (names::RATE_STATE, self.rate_buckets),
            (names::EVENT_STATE, self.event_slots),
        ]
    }

    fn of(config: &XdpConfig) -> Sizes {
        // Keys the lists can take: a network whose length is not a target length takes more
        // than one (see gateway_common::maps::lists).
        let keys4 = config
            .blocklist_v4_capacity
            .saturating_add(config.allowlist_v4_capacity);
        let keys6 = config
            .blocklist_v6_capacity
            .saturating_add(config.allowlist_v6_capacity);
        // One to two slots per key: with the lists full, a few percent of keys overflow.
        let keys = u64::from(keys4) + u64::from(keys6);
        let list_buckets = keys
            .div_ceil(lists::WAYS as u64)
            .next_power_of_two()
            .min(1 << 30) as u32;
        // The overflow maps hold only keys whose bucket was full; a hash map's bucket array
        // is allocated for its capacity, so they get a quarter of the keys, enough for any
        // fill short of pathological.
        let overflow = |keys: u32| (keys / 4).max(4096).min(keys);
        let (list4, list6) = (overflow(keys4), overflow(keys6));
        // Four slots per bucket, and at least twice the slots asked for: when that many
        // sources are tracked, under 4% of them lose their slot to a new source.
        let rate_buckets = config
            .ratelimit_sources
            .div_ceil(RATE_WAYS as u32 / 2)
            .next_power_of_two();
        Sizes {
            list_buckets,
            list4,
            list6,
            rate_buckets,
            event_slots: config.events.sources.next_power_of_two(),
        }
    }
}

/// Nanoseconds per kernel tick: the resolution of the coarse clocks is one jiffy.
fn tick_ns() -> Result<u64, String> {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_getres writes one timespec.
    if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } != 0 {
        return Err(format!(
            "cannot read the kernel tick length: {}",
            std::io::Error::last_os_error()
        ));
    }
    let ns = res.tv_sec as u64 * 1_000_000_000 + res.tv_nsec as u64;
    // HZ is between 100 and 1000 on every kernel build.
    if !(1_000_000..=10_000_000).contains(&ns) {
        return Err(format!("unexpected kernel tick length of {ns} ns"));
    }
    Ok(ns)
}

pub(crate) fn random_seed() -> Result<u64, String> {
    let mut seed = [0u8; 8];
    // SAFETY: getrandom writes at most 8 bytes into the buffer.
    let got = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if got != seed.len() as isize {
        return Err(format!(
            "cannot get a random seed: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(u64::from_ne_bytes(seed))
}

impl Drop for Kernel {
    fn drop(&mut self) {
        // A pinned link stays attached: that is what pinning is for.
        if let Some((_, _, LinkHold::Owned(_))) = &self.attached {
            if let Err(e) = self.detach() {
                tracing::warn!(error = %e, "detach");
            }
        }
        if let (None, Some(pins)) = (&self.attached, &self.pins) {
            if pins.created && pins.dir.exists() {
                let _ = pin::remove_map_pins(&pins.dir, &[]);
                let _ = std::fs::remove_dir(&pins.dir);
            }
        }
    }
}

/// The index of `interface` in this network namespace.
fn interface_index(interface: &str) -> Result<u32, String> {
    let name = std::ffi::CString::new(interface)
        .map_err(|_| format!("`{interface}` is not a valid interface name"))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(format!(
            "cannot attach to {interface}: unknown network interface"
        )),
        i => Ok(i),
    }
}

/// Whether an XDP link is pinned under `dir`.
pub fn pinned_link(dir: &Path) -> bool {
    matches!(pin::find_link(dir), Ok(Some(_)))
}

/// Detaches the XDP link pinned under `dir` and removes every pin there, without a daemon
/// (`gateway detach`). Returns a line for the operator.
pub fn detach_pins(dir: &Path) -> Result<String, String> {
    pin::detach_dir(dir)
        .map(|done| done.describe(dir))
        .map_err(|e| error_chain(&e))
}

/// An error with its sources, each once: `outer: inner: root`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
