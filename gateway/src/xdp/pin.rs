//! Pins: the XDP link and every map of the program under one bpffs directory
//! (`xdp.pin_dir`), so that the kernel keeps enforcing the lists and the rate limit while no
//! daemon runs, and the next daemon adopts them without a gap.
//!
//! Layout of the directory (names from this module and from the program's map names):
//!
//! ```text
//! /sys/fs/bpf/gateway/
//!     link_native | link_skb     the XDP link; the name says its attach mode
//!     LIST_TABLE LIST4 LIST6 RATE_STATE SETTINGS VERDICTS ...   every map of the program
//! ```
//!
//! Maps are pinned by name through aya's `EbpfLoader::map_pin_path`, for every map the object
//! file declares (its data sections aside), so a map added to the program later is pinned and
//! adopted too without code here knowing it.

use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::DirBuilderExt as _},
    },
    path::{Path, PathBuf},
};

use aya_obj::{
    generated::{bpf_cmd, bpf_link_info, bpf_link_type, bpf_map_info, bpf_map_type},
    EbpfSectionKind,
};

use super::AttachedMode;

/// The link's pin when attached in native (driver) mode.
pub const LINK_NATIVE: &str = "link_native";
/// The link's pin when attached in skb (generic) mode.
pub const LINK_SKB: &str = "link_skb";
/// Where bpffs is mounted when it is missing.
pub const BPFFS: &str = "/sys/fs/bpf";
/// `statfs(2)` f_type of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{}: not on a bpf filesystem (bpffs): no pins can live there, and nothing there is touched; use a directory below {BPFFS}", path.display())]
    NotBpffs { path: PathBuf },
    #[error("mounting bpffs at {BPFFS}")]
    Mount {
        #[source]
        source: io::Error,
    },
    #[error("{}: {what}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not a pinned XDP link (link type {found})", path.display())]
    NotXdpLink { path: PathBuf, found: u32 },
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PinError + 'a {
    move |source| PinError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The pin name of a link attached in `mode`.
pub fn link_name(mode: AttachedMode) -> &'static str {
    match mode {
        AttachedMode::Native => LINK_NATIVE,
        AttachedMode::Skb => LINK_SKB,
    }
}

/// Whether `path` (which exists) is on bpffs.
fn on_bpffs(path: &Path) -> io::Result<bool> {
    let c = cstring(path)?;
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs writes one struct statfs into buf.
    if unsafe { libc::statfs(c.as_ptr(), &mut buf) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf.f_type as i64 == BPF_FS_MAGIC)
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Makes sure `dir` exists on bpffs, mounting bpffs at /sys/fs/bpf first when `dir` is below
/// it and nothing is mounted there (a fresh machine without systemd). Returns whether it
/// mounted.
pub fn prepare_dir(dir: &Path) -> Result<bool, PinError> {
    let mut mounted = false;
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    if !on_bpffs(existing).map_err(io_error("cannot stat", existing))? {
        if !dir.starts_with(BPFFS) || !Path::new(BPFFS).is_dir() {
            return Err(PinError::NotBpffs {
                path: dir.to_path_buf(),
            });
        }
        mount_bpffs()?;
        mounted = true;
        if !on_bpffs(dir.ancestors().find(|a| a.exists()).unwrap_or(existing))
            .map_err(io_error("cannot stat", existing))?
        {
            return Err(PinError::NotBpffs {
                path: dir.to_path_buf(),
            });
        }
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error("cannot create the pin directory", dir))?;
    Ok(mounted)
}

fn mount_bpffs() -> Result<(), PinError> {
    let (source, target, fstype, data) = (c"bpf", c"/sys/fs/bpf", c"bpf", c"mode=0700");
    // SAFETY: mount(2) with NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(PinError::Mount {
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Whether this process runs in a mount namespace other than init's (None: cannot tell). A
/// bpffs mounted there, and the pins in it, end with the namespace.
pub fn private_mount_namespace() -> Option<bool> {
    use std::os::unix::fs::MetadataExt as _;
    let me = fs::metadata("/proc/self/ns/mnt").ok()?;
    let init = fs::metadata("/proc/1/ns/mnt").ok()?;
    Some((me.dev(), me.ino()) != (init.dev(), init.ino()))
}

// The few bpf(2) commands aya 0.14 does not expose: BPF_OBJ_GET on a path of ours,
// BPF_OBJ_GET_INFO_BY_FD for the link's interface and the maps' shapes, BPF_LINK_DETACH.

#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

#[repr(C)]
struct LinkDetachAttr {
    link_fd: u32,
}

fn sys_bpf<T>(cmd: bpf_cmd, attr: &mut T) -> io::Result<i64> {
    // SAFETY: attr is a prefix of union bpf_attr for `cmd`, of the size passed; the kernel
    // zero-fills the rest.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut T,
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Opens a pinned object.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = cstring(path)?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = sys_bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn info_by_fd<T>(fd: &OwnedFd) -> io::Result<T> {
    // SAFETY: the info structs are plain integers; all zeroes is valid.
    let mut info: T = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<T>() as u32,
        info: &mut info as *mut T as u64,
    };
    sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Calls `f` with the index and value bytes of every element of the array map pinned at
/// `path`, reading 4096 elements per BPF_MAP_LOOKUP_BATCH: a 1,000,000-bucket table in a few
/// hundred system calls instead of a million lookups.
pub fn for_each_array_value(
    path: &Path,
    value_size: usize,
    mut f: impl FnMut(u32, &[u8]),
) -> io::Result<()> {
    const CHUNK: usize = 4096;
    let fd = obj_get(path)?;
    let mut keys = vec![0u32; CHUNK];
    let mut values = vec![0u8; CHUNK * value_size];
    let mut next = 0u32;
    let mut first = true;
    loop {
        let position = next;
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &position as *const u32 as u64
            },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        first = false;
        let result = sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
        let done = match result {
            Ok(_) => false,
            // The last batch: `count` says how many it still holds.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        for i in 0..attr.count as usize {
            f(keys[i], &values[i * value_size..(i + 1) * value_size]);
        }
        if done {
            return Ok(());
        }
    }
}

/// A pinned XDP link found in the pin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundLink {
    pub path: PathBuf,
    pub mode: AttachedMode,
    /// The interface it is attached to (in the network namespace that attached it); 0 when the
    /// interface is gone.
    pub ifindex: u32,
}

/// Where a new link is pinned until it replaces the one pinned under `name` (bpffs refuses
/// dots in names).
pub fn staged_link_name(name: &str) -> String {
    format!("{name}_new")
}

/// The pinned XDP link of `dir`, if any. With both names pinned (a crash between pinning a
/// new link and removing the old one), the native one. A link staged by a daemon that crashed
/// while moving to another interface is moved into place first, as that daemon would have.
pub fn find_link(dir: &Path) -> Result<Option<FoundLink>, PinError> {
    for name in [LINK_NATIVE, LINK_SKB] {
        let staged = dir.join(staged_link_name(name));
        if !staged.exists() {
            continue;
        }
        let path = dir.join(name);
        if path.exists() {
            detach_link(&path)?;
        }
        fs::rename(&staged, &path).map_err(io_error("cannot move the staged link", &staged))?;
    }
    for (name, mode) in [
        (LINK_NATIVE, AttachedMode::Native),
        (LINK_SKB, AttachedMode::Skb),
    ] {
        let path = dir.join(name);
        let fd = match obj_get(&path) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("cannot open the pinned link", &path)(e)),
        };
        let info: bpf_link_info =
            info_by_fd(&fd).map_err(io_error("cannot read the pinned link", &path))?;
        if info.type_ != bpf_link_type::BPF_LINK_TYPE_XDP as u32 {
            return Err(PinError::NotXdpLink {
                path,
                found: info.type_,
            });
        }
        // SAFETY: an XDP link's info carries the xdp member of the union.
        let ifindex = unsafe { info.__bindgen_anon_1.xdp.ifindex };
        return Ok(Some(FoundLink {
            path,
            mode,
            ifindex,
        }));
    }
    Ok(None)
}

/// Detaches the pinned link at `path` from its interface and removes the pin. Returns the
/// interface index it was attached to (0: its interface was already gone).
pub fn detach_link(path: &Path) -> Result<u32, PinError> {
    let fd = obj_get(path).map_err(io_error("cannot open the pinned link", path))?;
    let ifindex = info_by_fd::<bpf_link_info>(&fd)
        // SAFETY: as in find_link; any link type's union starts with plain integers.
        .map(|info| unsafe { info.__bindgen_anon_1.xdp.ifindex })
        .unwrap_or(0);
    let mut attr = LinkDetachAttr {
        link_fd: fd.as_raw_fd() as u32,
    };
    // A link whose interface is gone is detached already (ENOLINK or EINVAL); removing the
    // pin releases it either way.
    if let Err(e) = sys_bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr) {
        if !matches!(e.raw_os_error(), Some(libc::ENOLINK | libc::EINVAL)) {
            return Err(io_error("cannot detach the pinned link", path)(e));
        }
    }
    fs::remove_file(path).map_err(io_error("cannot remove the pin", path))?;
    Ok(ifindex)
}

/// What a map of the object file must look like when pinned.
struct Shape {
    name: String,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    /// 0: not compared (sized by the kernel, e.g. per-CPU event arrays).
    max_entries: u32,
    flags: u32,
}

/// What to do with the pinned maps.
#[derive(Debug, PartialEq, Eq)]
pub enum MapPlan {
    /// None pinned: create and pin them all.
    Fresh,
    /// Every map this program needs is pinned with the right shape: reuse them (maps the
    /// program gained since are created and pinned).
    Adopt,
    /// Pinned maps that do not fit (sizes changed in the config, another program version, or
    /// an incomplete set): create them all anew. The reasons, one per map.
    Recreate(Vec<String>),
}

/// The regular maps of the XDP object file (its `.data`, `.rodata` and `.bss` sections aside):
/// their names, in a stable order.
pub fn map_names(obj: &aya_obj::Object) -> Vec<String> {
    let mut names: Vec<String> = obj
        .maps
        .iter()
        .filter(|(_, m)| {
            !matches!(
                m.section_kind(),
                EbpfSectionKind::Data | EbpfSectionKind::Rodata | EbpfSectionKind::Bss
            )
        })
        .map(|(name, _)| name.clone())
        .collect();
    names.sort();
    names
}

fn shapes(obj: &aya_obj::Object, sizes: &[(&str, u32)]) -> Vec<Shape> {
    map_names(obj)
        .into_iter()
        .filter_map(|name| {
            let map = obj.maps.get(&name)?;
            let map_type = map.map_type();
            let declared = sizes
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| *s)
                .unwrap_or(map.max_entries());
            let max_entries = if map_type == bpf_map_type::BPF_MAP_TYPE_PERF_EVENT_ARRAY as u32 {
                0
            } else {
                declared
            };
            Some(Shape {
                name,
                map_type,
                key_size: map.key_size(),
                value_size: map.value_size(),
                max_entries,
                flags: map.map_flags(),
            })
        })
        .collect()
}

/// Compares the maps pinned in `dir` with those the object declares, sized by `sizes` (map
/// name, max_entries). A missing map among `core` (the maps whose contents depend on each
/// other) means recreating them all; a missing other map is simply created.
pub fn plan_maps(
    dir: &Path,
    obj: &aya_obj::Object,
    sizes: &[(&str, u32)],
    core: &[&str],
) -> Result<MapPlan, PinError> {
    let mut reasons = Vec::new();
    let mut pinned = 0;
    let mut missing = Vec::new();
    for shape in shapes(obj, sizes) {
        let path = dir.join(&shape.name);
        let fd = match obj_get(&path) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(shape.name);
                continue;
            }
            Err(e) => {
                reasons.push(format!("{}: cannot open the pin: {e}", shape.name));
                continue;
            }
        };
        pinned += 1;
        let info: bpf_map_info = match info_by_fd(&fd) {
            Ok(info) => info,
            Err(e) => {
                reasons.push(format!("{}: not a readable map: {e}", shape.name));
                continue;
            }
        };
        if info.type_ != shape.map_type
            || info.key_size != shape.key_size
            || info.value_size != shape.value_size
            || info.map_flags != shape.flags
        {
            reasons.push(format!(
                "{}: pinned with another layout (type {}, key {} B, value {} B, flags {:#x}; this program needs type {}, key {} B, value {} B, flags {:#x})",
                shape.name, info.type_, info.key_size, info.value_size, info.map_flags,
                shape.map_type, shape.key_size, shape.value_size, shape.flags
            ));
        } else if shape.max_entries != 0 && info.max_entries != shape.max_entries {
            reasons.push(format!(
                "{}: pinned with {} entries, the config asks for {}",
                shape.name, info.max_entries, shape.max_entries
            ));
        }
    }
    if pinned == 0 {
        return Ok(MapPlan::Fresh);
    }
    for name in missing {
        if core.contains(&name.as_str()) {
            reasons.push(format!("{name}: not pinned while other maps are"));
        }
    }
    Ok(if reasons.is_empty() {
        MapPlan::Adopt
    } else {
        MapPlan::Recreate(reasons)
    })
}

/// Removes every pin in `dir` but the links and those named in `keep`. Returns how many it
/// removed.
pub fn remove_map_pins(dir: &Path, keep: &[String]) -> Result<usize, PinError> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(io_error("cannot read the pin directory", dir))? {
        let entry = entry.map_err(io_error("cannot read the pin directory", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == LINK_NATIVE || name == LINK_SKB || keep.iter().any(|k| *k == name) {
            continue;
        }
        let path = entry.path();
        let result = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        result.map_err(io_error("cannot remove the pin", &path))?;
        removed += 1;
    }
    Ok(removed)
}

/// What [`detach_dir`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Detached {
    /// The links detached: their mode and interface index.
    pub links: Vec<(AttachedMode, u32)>,
    /// Map pins removed.
    pub maps: usize,
}

/// Detaches the pinned link of `dir` and removes every pin and the directory: the program and
/// its maps are freed once nothing else holds them. Nothing there is not an error.
pub fn detach_dir(dir: &Path) -> Result<Detached, PinError> {
    let mut done = Detached::default();
    if !dir.exists() {
        return Ok(done);
    }
    // Never remove files from anything but bpffs.
    if !on_bpffs(dir).map_err(io_error("cannot stat", dir))? {
        return Err(PinError::NotBpffs {
            path: dir.to_path_buf(),
        });
    }
    for (name, mode) in [
        (LINK_NATIVE, AttachedMode::Native),
        (LINK_SKB, AttachedMode::Skb),
    ] {
        for path in [dir.join(name), dir.join(staged_link_name(name))] {
            if path.exists() {
                done.links.push((mode, detach_link(&path)?));
            }
        }
    }
    done.maps = remove_map_pins(dir, &[])?;
    fs::remove_dir(dir).map_err(io_error("cannot remove the pin directory", dir))?;
    Ok(done)
}

impl Detached {
    /// One line for the operator.
    pub fn describe(&self, dir: &Path) -> String {
        if self.links.is_empty() && self.maps == 0 {
            return format!("nothing was pinned under {}", dir.display());
        }
        let links: Vec<String> = self
            .links
            .iter()
            .map(|(mode, ifindex)| match ifindex {
                0 => format!("a {} mode link whose interface is gone", mode.name()),
                i => format!("interface index {i} ({} mode)", mode.name()),
            })
            .collect();
        let what = if links.is_empty() {
            "no link was pinned".to_string()
        } else {
            format!("XDP detached from {}", links.join(", "))
        };
        format!(
            "{what}; {} map pins and {} removed",
            self.maps,
            dir.display()
        )
    }
}
