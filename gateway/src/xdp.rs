//! The XDP layer from userspace: loading the program with map sizes from the config, attaching
//! it, and keeping its maps in step with the lists and the rate limit.

use std::{collections::HashMap as StdHashMap, net::IpAddr};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray},
    programs::{xdp::XdpLinkId, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use gateway_common::{
    maps as names,
    maps::{cover, list_bit},
    Counter, Settings, Verdict,
};
use ipnet::IpNet;

use crate::{
    config::{XdpConfig, XdpModeConfig},
    lists::{Enforcer, ListKind},
    net::is_host,
};

/// The XDP object file, built by build.rs.
pub static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-xdp"));
/// The program's function name.
pub const PROGRAM_NAME: &str = "gateway";

/// The eight list maps, in the order of their bits in [`Settings::lists`].
struct ListMaps {
    block4_host: HashMap<MapData, [u8; 4], u32>,
    block4_net: LpmTrie<MapData, [u8; 4], u32>,
    block6_host: HashMap<MapData, [u8; 16], u32>,
    block6_net: LpmTrie<MapData, [u8; 16], u32>,
    allow4_host: HashMap<MapData, [u8; 4], u32>,
    allow4_net: LpmTrie<MapData, [u8; 4], u32>,
    allow6_host: HashMap<MapData, [u8; 16], u32>,
    allow6_net: LpmTrie<MapData, [u8; 16], u32>,
}

/// The userspace side of an IPv4 coverage bitmap (see gateway_common::maps::cover): counts
/// from which the kernel's bits are derived, so removing one of two overlapping prefixes keeps
/// the bits the other needs.
struct Cover4 {
    map: Array<MapData, u64>,
    /// Per /24: listed prefixes of length 0..=24 that cover it (at most 25, one per length).
    /// Allocated (16 MiB) with the first such prefix.
    full: Vec<u8>,
    /// Per /24: listed prefixes longer than /24 inside it.
    partial: StdHashMap<u32, u32>,
}

impl Cover4 {
    fn new(map: Array<MapData, u64>) -> Cover4 {
        Cover4 {
            map,
            full: Vec::new(),
            partial: StdHashMap::new(),
        }
    }

    /// Counts `nets` (IPv4 prefixes, not hosts) in or out and rewrites the words that changed.
    fn apply(&mut self, nets: &[IpNet], add: bool) -> Result<(), String> {
        let mut full_ranges: Vec<(u32, u32)> = Vec::new();
        let mut partial_words: Vec<u32> = Vec::new();
        for net in nets {
            let IpNet::V4(v4) = net else { continue };
            let len = v4.prefix_len();
            let first = cover::slash24(v4.network().octets());
            if len <= 24 {
                if self.full.is_empty() {
                    self.full = vec![0u8; 1 << 24];
                }
                let count = 1u32 << (24 - len);
                for c in &mut self.full[first as usize..(first + count) as usize] {
                    *c = if add {
                        c.saturating_add(1)
                    } else {
                        c.saturating_sub(1)
                    };
                }
                full_ranges.push((first >> 6, (first + count - 1) >> 6));
            } else {
                let c = self.partial.entry(first).or_insert(0);
                *c = if add {
                    c.saturating_add(1)
                } else {
                    c.saturating_sub(1)
                };
                if *c == 0 {
                    self.partial.remove(&first);
                }
                partial_words.push(first >> 6);
            }
        }
        // Merge overlapping word ranges, so each word is written once.
        full_ranges.sort_unstable();
        let mut full_words: Vec<u32> = Vec::new();
        for (from, to) in full_ranges {
            let from = full_words.last().map_or(from, |last| from.max(last + 1));
            full_words.extend(from..=to);
        }
        partial_words.sort_unstable();
        partial_words.dedup();
        for word in full_words {
            let base = (word as usize) << 6;
            let bits = self.full[base..base + 64]
                .iter()
                .enumerate()
                .fold(0u64, |acc, (i, c)| if *c > 0 { acc | 1 << i } else { acc });
            self.map
                .set(word, bits, 0)
                .map_err(|e| map_error("IPv4 coverage", e))?;
        }
        for word in partial_words {
            let bits = (0..64u32).fold(0u64, |acc, i| {
                if self.partial.contains_key(&((word << 6) | i)) {
                    acc | 1 << i
                } else {
                    acc
                }
            });
            self.map
                .set(cover::WORDS + word, bits, 0)
                .map_err(|e| map_error("IPv4 coverage", e))?;
        }
        Ok(())
    }
}

/// Which of the eight maps a net lives in: its index (and bit) in [`Settings::lists`].
fn slot(kind: ListKind, net: &IpNet) -> usize {
    let list = match kind {
        ListKind::Block => 0,
        ListKind::Allow => 4,
    };
    let family = match net {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 2,
    };
    list + family + usize::from(!is_host(net))
}

const SLOT_BITS: [u32; 8] = [
    list_bit::BLOCK4_HOST,
    list_bit::BLOCK4_NET,
    list_bit::BLOCK6_HOST,
    list_bit::BLOCK6_NET,
    list_bit::ALLOW4_HOST,
    list_bit::ALLOW4_NET,
    list_bit::ALLOW6_HOST,
    list_bit::ALLOW6_NET,
];

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

/// The `lists` bits of the maps whose entry count is not zero.
fn list_bits(counts: &[usize; 8]) -> u32 {
    counts
        .iter()
        .zip(SLOT_BITS)
        .filter(|(n, _)| **n > 0)
        .fold(0, |acc, (_, bit)| acc | bit)
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

/// The loaded XDP program and its maps.
pub struct Kernel {
    ebpf: Ebpf,
    lists: ListMaps,
    block4_cover: Cover4,
    allow4_cover: Cover4,
    settings_map: Array<MapData, Settings>,
    verdicts: PerCpuArray<MapData, Counter>,
    /// What the SETTINGS map holds.
    settings: Settings,
    /// Entries per list map, to keep the `lists` bits right.
    counts: [usize; 8],
    /// Interface, mode and link while attached.
    attached: Option<(String, AttachedMode, XdpLinkId)>,
    logger: Option<aya_log::EbpfLogger<KernelLog>>,
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
        let level = config.log_level.aya_level();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::BLOCK4_HOST, config.blocklist_v4_capacity)
            .map_max_entries(names::BLOCK4_NET, config.blocklist_v4_capacity)
            .map_max_entries(names::BLOCK6_HOST, config.blocklist_v6_capacity)
            .map_max_entries(names::BLOCK6_NET, config.blocklist_v6_capacity)
            .map_max_entries(names::ALLOW4_HOST, config.allowlist_v4_capacity)
            .map_max_entries(names::ALLOW4_NET, config.allowlist_v4_capacity)
            .map_max_entries(names::ALLOW6_HOST, config.allowlist_v6_capacity)
            .map_max_entries(names::ALLOW6_NET, config.allowlist_v6_capacity)
            .map_max_entries(names::RATE_STATE, config.ratelimit_sources)
            .override_global(aya_log::LEVEL, &level, false)
            .load(PROGRAM)
            .map_err(|e| {
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
        let lists = ListMaps {
            block4_host: take(&mut ebpf, names::BLOCK4_HOST)?,
            block4_net: take(&mut ebpf, names::BLOCK4_NET)?,
            block6_host: take(&mut ebpf, names::BLOCK6_HOST)?,
            block6_net: take(&mut ebpf, names::BLOCK6_NET)?,
            allow4_host: take(&mut ebpf, names::ALLOW4_HOST)?,
            allow4_net: take(&mut ebpf, names::ALLOW4_NET)?,
            allow6_host: take(&mut ebpf, names::ALLOW6_HOST)?,
            allow6_net: take(&mut ebpf, names::ALLOW6_NET)?,
        };
        let block4_cover = Cover4::new(take(&mut ebpf, names::BLOCK4_COVER)?);
        let allow4_cover = Cover4::new(take(&mut ebpf, names::ALLOW4_COVER)?);
        let settings_map: Array<MapData, Settings> = take(&mut ebpf, names::SETTINGS)?;
        let verdicts = take(&mut ebpf, names::VERDICTS)?;
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
            lists,
            block4_cover,
            allow4_cover,
            settings_map,
            verdicts,
            settings: Settings::default(),
            counts: [0; 8],
            attached: None,
            logger,
        };
        let rate = config.ratelimit.settings()?;
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
    pub fn attach(&mut self, interface: &str, mode: XdpModeConfig) -> Result<AttachedMode, String> {
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
        let (got, link) = got;
        self.attached = Some((interface.to_string(), got, link));
        Ok(got)
    }

    /// Where the program is attached, if it is.
    pub fn attached(&self) -> Option<(&str, AttachedMode)> {
        self.attached.as_ref().map(|(i, m, _)| (i.as_str(), *m))
    }

    /// Detaches from the interface (dropping the Kernel does the same).
    pub fn detach(&mut self) {
        if let Some((_, _, link)) = self.attached.take() {
            if let Err(e) = self.program_mut().detach(link) {
                tracing::warn!(error = %e, "detach");
            }
        }
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

    /// Sets the rate limit (keeping the list bits). Takes effect on the next packet.
    pub fn set_rate(&mut self, rate: Settings) -> Result<(), String> {
        let new = Settings {
            lists: self.settings.lists,
            _pad: 0,
            ..rate
        };
        self.write_settings(new)
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

    fn insert_one(&mut self, slot: usize, net: &IpNet) -> Result<(), MapError> {
        let v = names::LIST_ENTRY;
        let m = &mut self.lists;
        match (slot, net.addr()) {
            (0, IpAddr::V4(a)) => m.block4_host.insert(a.octets(), v, 0),
            (1, IpAddr::V4(a)) => {
                m.block4_net
                    .insert(&Key::new(net.prefix_len().into(), a.octets()), v, 0)
            }
            (2, IpAddr::V6(a)) => m.block6_host.insert(a.octets(), v, 0),
            (3, IpAddr::V6(a)) => {
                m.block6_net
                    .insert(&Key::new(net.prefix_len().into(), a.octets()), v, 0)
            }
            (4, IpAddr::V4(a)) => m.allow4_host.insert(a.octets(), v, 0),
            (5, IpAddr::V4(a)) => {
                m.allow4_net
                    .insert(&Key::new(net.prefix_len().into(), a.octets()), v, 0)
            }
            (6, IpAddr::V6(a)) => m.allow6_host.insert(a.octets(), v, 0),
            (7, IpAddr::V6(a)) => {
                m.allow6_net
                    .insert(&Key::new(net.prefix_len().into(), a.octets()), v, 0)
            }
            _ => unreachable!("slot() matches the address family"),
        }
    }

    fn remove_one(&mut self, slot: usize, net: &IpNet) -> Result<(), MapError> {
        let m = &mut self.lists;
        let result = match (slot, net.addr()) {
            (0, IpAddr::V4(a)) => m.block4_host.remove(&a.octets()),
            (1, IpAddr::V4(a)) => m
                .block4_net
                .remove(&Key::new(net.prefix_len().into(), a.octets())),
            (2, IpAddr::V6(a)) => m.block6_host.remove(&a.octets()),
            (3, IpAddr::V6(a)) => m
                .block6_net
                .remove(&Key::new(net.prefix_len().into(), a.octets())),
            (4, IpAddr::V4(a)) => m.allow4_host.remove(&a.octets()),
            (5, IpAddr::V4(a)) => m
                .allow4_net
                .remove(&Key::new(net.prefix_len().into(), a.octets())),
            (6, IpAddr::V6(a)) => m.allow6_host.remove(&a.octets()),
            (7, IpAddr::V6(a)) => m
                .allow6_net
                .remove(&Key::new(net.prefix_len().into(), a.octets())),
            _ => unreachable!("slot() matches the address family"),
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

    /// Sets the `lists` bit of every map that holds entries, clears the others.
    fn sync_list_bits(&mut self) -> Result<(), String> {
        let lists = list_bits(&self.counts);
        if lists != self.settings.lists {
            self.write_settings(Settings {
                lists,
                ..self.settings
            })?;
        }
        Ok(())
    }
}

impl Kernel {
    fn cover(&mut self, kind: ListKind) -> &mut Cover4 {
        match kind {
            ListKind::Block => &mut self.block4_cover,
            ListKind::Allow => &mut self.allow4_cover,
        }
    }
}

/// The IPv4 prefixes (not hosts) among `nets`: what the coverage bitmaps track.
fn v4_prefixes(nets: &[IpNet]) -> Vec<IpNet> {
    nets.iter()
        .filter(|n| matches!(n, IpNet::V4(_)) && !is_host(n))
        .copied()
        .collect()
}

impl Enforcer for Kernel {
    fn insert(&mut self, kind: ListKind, nets: &[IpNet]) -> Result<(), String> {
        // Bits first: a map's entries only matter once the program looks it up.
        let mut wanted = self.counts;
        for net in nets {
            wanted[slot(kind, net)] += 1;
        }
        let previous = self.settings;
        self.write_settings(Settings {
            lists: self.settings.lists | list_bits(&wanted),
            ..self.settings
        })?;
        for (i, net) in nets.iter().enumerate() {
            if let Err(e) = self.insert_one(slot(kind, net), net) {
                for done in &nets[..i] {
                    let _ = self.remove_one(slot(kind, done), done);
                }
                let _ = self.write_settings(previous);
                return Err(map_error(&format!("{} insert of {net}", kind.name()), e));
            }
        }
        // The trie holds the prefixes before the bitmap sends lookups to it.
        let prefixes = v4_prefixes(nets);
        if !prefixes.is_empty() {
            if let Err(e) = self.cover(kind).apply(&prefixes, true) {
                let _ = self.cover(kind).apply(&prefixes, false);
                for done in nets {
                    let _ = self.remove_one(slot(kind, done), done);
                }
                let _ = self.write_settings(previous);
                return Err(e);
            }
        }
        self.counts = wanted;
        Ok(())
    }

    fn remove(&mut self, kind: ListKind, nets: &[IpNet]) -> Result<(), String> {
        // The bitmap stops sending lookups to the trie before the prefixes leave it.
        let prefixes = v4_prefixes(nets);
        if !prefixes.is_empty() {
            if let Err(e) = self.cover(kind).apply(&prefixes, false) {
                let _ = self.cover(kind).apply(&prefixes, true);
                return Err(e);
            }
        }
        for (i, net) in nets.iter().enumerate() {
            if let Err(e) = self.remove_one(slot(kind, net), net) {
                for done in &nets[..i] {
                    let _ = self.insert_one(slot(kind, done), done);
                }
                let _ = self.cover(kind).apply(&prefixes, true);
                return Err(map_error(&format!("{} removal of {net}", kind.name()), e));
            }
        }
        for net in nets {
            let s = slot(kind, net);
            self.counts[s] = self.counts[s].saturating_sub(1);
        }
        self.sync_list_bits()
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.detach();
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
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
