//! Flood pieces shared by the flood test and `flood-bench`: a four-namespace topology in which an
//! attacker's frames reach the gateway's veth as XDP frames (through an XDP redirect hop), the way
//! a NIC's receive ring hands them over; trafgen as the flood generator; the gateway's NAPI thread;
//! and a legitimate HTTPS client that measures what it gets.
//!
//! ```text
//!   client ns                 hop ns (router, ip_forward)                  gateway ns
//!   c0 198.18.1.2 ----- c1 198.18.1.1                    h0 198.18.0.254 ----- g0 198.18.0.1
//!                                                          ^                    (gateway XDP)
//!   attacker ns                                            | bpf_redirect
//!   a0 (trafgen) ------ a1 [XDP: redirect every frame to h0]
//! ```
//!
//! Legitimate traffic is routed by the hop's stack; the flood never is: the XDP program on `a1`
//! redirects every frame into `h0`, whose peer `g0` receives it as an `xdp_frame`. `g0` keeps GRO
//! on, so its NAPI instance exists with or without an XDP program (veth needs it to accept
//! redirected frames), and it runs threaded, so its receive work happens in one kernel thread
//! that can be pinned and whose CPU time can be read.
//!
//! Every name carries the process id and a counter; `Drop` removes the namespaces (and with them
//! the veths and the XDP link), also when a test panics.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    harness::{in_netns, sh},
    web::{self, Pki, Upstream},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub const GW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const HOP_GW_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const HOP_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// The attacker's blocked network: flood sources are random hosts in it.
pub const BLOCKED_NET: &str = "198.19.255.0/24";
/// The attacker's rate-limited sources: `198.19.0.0` up to `198.19.0.{RATE_SOURCES - 1}`.
pub const RATE_SOURCES: u8 = 8;
/// The gateway's TLS port, which the flood aims at too.
pub const TLS_PORT: u16 = 8443;

pub struct Topology {
    pub gw_ns: String,
    pub hop_ns: String,
    pub cl_ns: String,
    pub atk_ns: String,
    /// The gateway's interface (XDP attaches here).
    pub g0: String,
    pub h0: String,
    pub a0: String,
    pub a1: String,
    pub c0: String,
    pub c1: String,
}

fn mac(ns: &str, dev: &str) -> String {
    sh(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "cat",
            &format!("/sys/class/net/{dev}/address"),
        ],
    )
    .trim()
    .to_string()
}

/// `ethtool -S` of `dev` in `ns`, for diagnostics.
pub fn ethtool_stats(ns: &str, dev: &str) -> String {
    sh("ip", &["netns", "exec", ns, "ethtool", "-S", dev])
}

impl Topology {
    pub fn new() -> Topology {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Short: `napi/<dev>-<id>` must fit a 15-character thread name.
        let tag = format!("{:x}{:x}", std::process::id() & 0xffff, n);
        let t = Topology {
            gw_ns: format!("gwf-{tag}-gw"),
            hop_ns: format!("gwf-{tag}-hop"),
            cl_ns: format!("gwf-{tag}-cl"),
            atk_ns: format!("gwf-{tag}-atk"),
            g0: format!("f{tag}g"),
            h0: format!("f{tag}h"),
            a0: format!("f{tag}a"),
            a1: format!("f{tag}b"),
            c0: format!("f{tag}c"),
            c1: format!("f{tag}d"),
        };
        // From here on Drop removes whatever exists.
        for ns in [&t.gw_ns, &t.hop_ns, &t.cl_ns, &t.atk_ns] {
            sh("ip", &["netns", "add", ns]);
            sh("ip", &["-n", ns, "link", "set", "lo", "up"]);
            for key in ["all.disable_ipv6=1", "default.disable_ipv6=1"] {
                sh(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        ns,
                        "sysctl",
                        "-qw",
                        &format!("net.ipv6.conf.{key}"),
                    ],
                );
            }
        }
        let pairs = [
            (&t.g0, &t.gw_ns, &t.h0, &t.hop_ns),
            (&t.a0, &t.atk_ns, &t.a1, &t.hop_ns),
            (&t.c0, &t.cl_ns, &t.c1, &t.hop_ns),
        ];
        for (a, a_ns, b, b_ns) in pairs {
            sh(
                "ip",
                &[
                    "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns",
                    b_ns,
                ],
            );
            sh("ip", &["-n", a_ns, "link", "set", a, "up"]);
            sh("ip", &["-n", b_ns, "link", "set", b, "up"]);
        }
        let addr =
            |ns: &str, dev: &str, a: &str| sh("ip", &["-n", ns, "addr", "add", a, "dev", dev]);
        addr(&t.gw_ns, &t.g0, "198.18.0.1/24");
        addr(&t.hop_ns, &t.h0, "198.18.0.254/24");
        addr(&t.hop_ns, &t.c1, "198.18.1.1/24");
        addr(&t.cl_ns, &t.c0, "198.18.1.2/24");
        sh(
            "ip",
            &[
                "-n",
                &t.gw_ns,
                "route",
                "add",
                "default",
                "via",
                "198.18.0.254",
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                &t.cl_ns,
                "route",
                "add",
                "default",
                "via",
                "198.18.1.1",
            ],
        );
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &t.hop_ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        );
        // The hop has no route back to the attacker: the gateway's answers to the flood die
        // there, quietly.
        sh(
            "ip",
            &[
                "-n",
                &t.hop_ns,
                "route",
                "add",
                "blackhole",
                "198.19.0.0/16",
            ],
        );
        // Static neighbours: the gateway must not depend on ARP through a flood.
        let g0_mac = mac(&t.gw_ns, &t.g0);
        let h0_mac = mac(&t.hop_ns, &t.h0);
        sh(
            "ip",
            &[
                "-n",
                &t.hop_ns,
                "neigh",
                "replace",
                "198.18.0.1",
                "lladdr",
                &g0_mac,
                "dev",
                &t.h0,
                "nud",
                "permanent",
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                &t.gw_ns,
                "neigh",
                "replace",
                "198.18.0.254",
                "lladdr",
                &h0_mac,
                "dev",
                &t.g0,
                "nud",
                "permanent",
            ],
        );
        // GRO on keeps g0's NAPI (veth accepts redirected frames only with it) whether or not
        // an XDP program is attached.
        sh(
            "ip",
            &[
                "netns", "exec", &t.gw_ns, "ethtool", "-K", &t.g0, "gro", "on",
            ],
        );
        sh(
            "ip",
            &[
                "netns", "exec", &t.hop_ns, "ethtool", "-K", &t.h0, "tso", "off", "gso", "off",
            ],
        );
        t
    }

    /// Threaded NAPI on `g0`: its receive work then runs in one kernel thread, which can be
    /// pinned and whose CPU time can be read ([`Topology::napi_thread`]). Off, it runs in softirq
    /// right where it is raised, which keeps up better on a busy machine.
    pub fn set_threaded(&self, on: bool) {
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.gw_ns,
                "sh",
                "-c",
                &format!(
                    "echo {} > /sys/class/net/{}/threaded",
                    u8::from(on),
                    self.g0
                ),
            ],
        );
    }

    /// Interrupt coalescing on `g0`, as a NIC does it: after a poll, NAPI waits `timeout_ns`
    /// (up to `defer` times) before it polls again rather than being woken for every handful of
    /// frames, so polls see batches and the per-wake cost does not swamp the per-packet cost.
    pub fn coalesce(&self, timeout_ns: u64, defer: u32) {
        let dir = format!("/sys/class/net/{}", self.g0);
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.gw_ns,
                "sh",
                "-c",
                &format!(
                    "echo {timeout_ns} > {dir}/gro_flush_timeout && echo {defer} > {dir}/napi_defer_hard_irqs"
                ),
            ],
        );
    }

    /// Frames the redirect hop could not hand to `g0` (its receive ring was full).
    pub fn hop_losses(&self) -> u64 {
        ethtool_stats(&self.hop_ns, &self.h0)
            .lines()
            .find_map(|l| l.trim().strip_prefix("tx_queue_0_xdp_xmit_errors:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn g0_mac(&self) -> String {
        mac(&self.gw_ns, &self.g0)
    }

    /// Attaches the redirect hop on `a1`: every frame goes to `h0`, hence to `g0` as an XDP
    /// frame. Detached when the returned value drops (or the namespace goes).
    pub fn redirect_hop(&self) -> RedirectHop {
        let (a1, h0) = (self.a1.clone(), self.h0.clone());
        in_netns(&self.hop_ns, move || RedirectHop::attach(&a1, &h0))
    }

    /// The kernel thread of `g0`'s NAPI instance (threaded mode): its pid.
    pub fn napi_thread(&self) -> Option<i32> {
        napi_thread(&self.g0)
    }

    /// Pins `g0`'s NAPI thread to `cpu`.
    pub fn pin_napi(&self, cpu: usize) {
        let pid = self.napi_thread().expect("g0 has a NAPI thread");
        sh("taskset", &["-p", "-c", &cpu.to_string(), &pid.to_string()]);
    }
}

impl Default for Topology {
    fn default() -> Self {
        Topology::new()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace destroys its veth ends, and with them their peers.
        for ns in [&self.atk_ns, &self.cl_ns, &self.hop_ns, &self.gw_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The pid of the kernel thread `napi/<dev>-<id>` (its name cut at 15 characters).
pub fn napi_thread(dev: &str) -> Option<i32> {
    let prefix = format!("napi/{dev}-");
    let prefix = &prefix[..prefix.len().min(15)];
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let comm = fs::read_to_string(entry.path().join("comm")).ok()?;
        comm.trim().starts_with(prefix).then_some(pid)
    })
}

/// CPU time (user + system) of a process or thread, in nanoseconds (from `/proc/PID/stat`, so
/// in clock ticks of 10 ms).
pub fn cpu_ns(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state is field 3; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    (ticks(11) + ticks(12)) * 1_000_000_000 / hz
}

/// A counter of `dev`'s `/sys/class/net/DEV/statistics`, read inside namespace `ns`.
pub fn dev_stat(ns: &str, dev: &str, name: &str) -> u64 {
    // Through `ip netns exec`, which mounts the namespace's own sysfs.
    let path = format!("/sys/class/net/{dev}/statistics/{name}");
    sh("ip", &["netns", "exec", ns, "cat", &path])
        .trim()
        .parse()
        .unwrap_or(0)
}

/// An XDP program of four instructions, `return bpf_redirect(IFINDEX, 0)`, loaded and attached
/// (native mode, through a BPF link) with raw syscalls: a redirect hop needs nothing more, and
/// writing it as bytecode keeps a second eBPF build out of the workspace.
pub struct RedirectHop {
    _prog: OwnedFd,
    _link: OwnedFd,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const BPF_FUNC_REDIRECT: i32 = 23;

/// One BPF instruction: opcode, registers (dst low nibble, src high), offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let bytes = [
        code,
        (src << 4) | dst,
        off.to_le_bytes()[0],
        off.to_le_bytes()[1],
    ];
    let head = u32::from_le_bytes(bytes) as u64;
    head | ((imm as u32 as u64) << 32)
}

fn bpf(cmd: libc::c_long, attr: *const libc::c_void, size: usize) -> Result<i32, String> {
    // SAFETY: attr points to a live, initialised attribute struct of `size` bytes.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if rc < 0 {
        Err(std::io::Error::last_os_error().to_string())
    } else {
        Ok(rc as i32)
    }
}

impl RedirectHop {
    /// Must run inside the namespace of both interfaces.
    pub fn attach(on: &str, to: &str) -> RedirectHop {
        let index = |name: &str| {
            let c = std::ffi::CString::new(name).unwrap();
            // SAFETY: a valid C string.
            let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
            assert!(i > 0, "no interface {name}");
            i
        };
        let (on_index, to_index) = (index(on), index(to));
        let program = [
            insn(0xb7, 1, 0, 0, to_index as i32), // r1 = ifindex (mov64 imm)
            insn(0xb7, 2, 0, 0, 0),               // r2 = 0 (flags)
            insn(0x85, 0, 0, 0, BPF_FUNC_REDIRECT), // call bpf_redirect
            insn(0x95, 0, 0, 0, 0),               // exit
        ];
        let license = b"GPL\0";
        let mut log = vec![0u8; 4096];
        let mut name = [0u8; 16];
        name[..12].copy_from_slice(b"flood_redir\0");
        let attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: program.len() as u32,
            insns: program.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            prog_name: name,
            ..Default::default()
        };
        let prog = bpf(
            BPF_PROG_LOAD,
            &attr as *const _ as *const libc::c_void,
            std::mem::size_of::<ProgLoadAttr>(),
        )
        .unwrap_or_else(|e| {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            panic!(
                "loading the redirect hop: {e}\n{}",
                String::from_utf8_lossy(&log[..end])
            )
        });
        // SAFETY: a new fd the kernel just returned to us.
        let prog = unsafe { OwnedFd::from_raw_fd(prog) };
        let attr = LinkCreateAttr {
            prog_fd: prog.as_raw_fd() as u32,
            target_ifindex: on_index,
            attach_type: BPF_XDP,
            flags: XDP_FLAGS_DRV_MODE,
        };
        let link = bpf(
            BPF_LINK_CREATE,
            &attr as *const _ as *const libc::c_void,
            std::mem::size_of::<LinkCreateAttr>(),
        )
        .unwrap_or_else(|e| panic!("attaching the redirect hop to {on}: {e}"));
        // SAFETY: as above.
        let link = unsafe { OwnedFd::from_raw_fd(link) };
        RedirectHop {
            _prog: prog,
            _link: link,
        }
    }
}

/// Kinds of flood packets, sent round robin by one trafgen run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flood {
    /// 64-byte UDP frames from random hosts of [`BLOCKED_NET`].
    UdpBlocked,
    /// TCP SYNs from random hosts of [`BLOCKED_NET`].
    SynBlocked,
    /// UDP from the [`RATE_SOURCES`] rate-limited sources, in turn.
    UdpRate,
    /// TCP SYNs from the rate-limited sources.
    SynRate,
}

impl Flood {
    /// trafgen's description of one frame (60 bytes before the FCS).
    fn trafgen(self, dst_mac: &str, src_mac: &str) -> String {
        let macs = |m: &str| {
            m.split(':')
                .map(|b| format!("0x{b}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let source = match self {
            Flood::UdpBlocked | Flood::SynBlocked => "198, 19, 255, drnd(1)".to_string(),
            Flood::UdpRate | Flood::SynRate => format!("198, 19, 0, dinc(0, {})", RATE_SOURCES - 1),
        };
        let (proto, l4) = match self {
            Flood::UdpBlocked | Flood::UdpRate => (
                17,
                // sport, dport, length 26, checksum 0 (none), 18 bytes of payload.
                format!("drnd(2), c16({TLS_PORT}), c16(26), c16(0), fill(0x5a, 18)"),
            ),
            Flood::SynBlocked | Flood::SynRate => (
                6,
                // sport, dport, seq, ack, offset 5 words, SYN, window, checksum, urgent, 6 pad.
                format!(
                    "drnd(2), c16({TLS_PORT}), drnd(4), c32(0), 0x50, 0x02, c16(64240), \
                     csumtcp(14, 34), c16(0), fill(0, 6)"
                ),
            ),
        };
        let total_len = if proto == 17 { 46 } else { 40 };
        format!(
            "{{ {}, {}, c16(0x0800), 0x45, 0x00, c16({total_len}), drnd(2), c16(0x4000), 64, \
             {proto}, csumip(14, 33), {source}, 198, 18, 0, 1, {l4} }}\n",
            macs(dst_mac),
            macs(src_mac)
        )
    }
}

/// What a trafgen run reported.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    /// Packets trafgen says it sent.
    pub packets: u64,
    /// `a0`'s transmit counter over the run (what entered the veth).
    pub tx_packets: u64,
    pub seconds: f64,
}

/// `net.core.wmem_default`, raised for trafgen and restored on drop: trafgen's TX ring flush
/// fails with the default. The sysctl is global and read-only inside a namespace.
struct WmemGuard(Option<String>);

const WMEM: &str = "/proc/sys/net/core/wmem_default";

impl WmemGuard {
    fn raise(bytes: u64) -> WmemGuard {
        let old = fs::read_to_string(WMEM).ok();
        if old
            .as_deref()
            .and_then(|o| o.trim().parse::<u64>().ok())
            .is_some_and(|o| o >= bytes)
        {
            return WmemGuard(None);
        }
        let _ = fs::write(WMEM, bytes.to_string());
        WmemGuard(old)
    }
}

impl Drop for WmemGuard {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = fs::write(WMEM, old.trim());
        }
    }
}

/// Runs trafgen in the attacker namespace on `a0` for about `seconds` (at most `seconds` + 5,
/// then it is killed), `pps` packets per second (0: as fast as it can), cycling through `kinds`,
/// pinned to `cpu` (trafgen binds its one process to CPU 0, so `cpu` must be 0).
pub fn trafgen(topo: &Topology, kinds: &[Flood], pps: u64, seconds: f64, dir: &Path) -> Sent {
    let conf = dir.join(format!(
        "flood-{}.cfg",
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let (dst, src) = (topo.g0_mac(), mac(&topo.atk_ns, &topo.a0));
    let text: String = kinds.iter().map(|k| k.trafgen(&dst, &src)).collect();
    fs::write(&conf, text).unwrap();
    let _wmem = WmemGuard::raise(4 << 20);
    let before = dev_stat(&topo.atk_ns, &topo.a0, "tx_packets");
    let start = Instant::now();
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "INT", "-k", "5"])
        .arg(format!("{seconds:.1}"))
        .args([
            "ip",
            "netns",
            "exec",
            &topo.atk_ns,
            "trafgen",
            "--dev",
            &topo.a0,
        ])
        .arg("--conf")
        .arg(&conf)
        .args(["--cpus", "1", "--no-sock-mem", "--no-cpu-stats", "-Q"]);
    if pps > 0 {
        cmd.args(["--rate", &format!("{pps}pps")]);
    }
    let out = cmd.output().expect("run trafgen");
    let seconds = start.elapsed().as_secs_f64();
    let tx_packets = dev_stat(&topo.atk_ns, &topo.a0, "tx_packets") - before;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // "  123456 packets outgoing"
    let packets = text
        .lines()
        .find(|l| l.contains("packets outgoing"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("trafgen printed no packet count ({}):\n{text}", out.status));
    Sent {
        packets,
        tx_packets,
        seconds,
    }
}

/// An [`Upstream`] inside namespace `ns` (on its loopback), on a thread of its own.
pub struct NsUpstream {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl NsUpstream {
    pub fn start(ns: &str) -> NsUpstream {
        let path = format!("/var/run/netns/{ns}");
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let file = fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let upstream = Upstream::start("api").await;
                addr_tx.send(upstream.addr).unwrap();
                let _ = stopped.await;
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("upstream started");
        NsUpstream {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for NsUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The gateway config's proxy part: TLS on `GW:TLS_PORT` with `cert`/`key`, one route to
/// `upstream`.
pub fn proxy_config(cert: &Path, key: &Path, upstream: SocketAddr) -> String {
    format!(
        "\n[proxy]\nconnect_timeout = \"2s\"\ntimeout = \"5s\"\n\n[proxy.tls]\nlisten = [\"{GW}:{TLS_PORT}\"]\n[[proxy.tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n\n[upstreams.api]\ntargets = [\"{upstream}\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n",
        cert.display(),
        key.display()
    )
}

/// What the legitimate client got.
#[derive(Debug, Clone, Default)]
pub struct Legit {
    pub ok: u64,
    pub failed: u64,
    /// Latency of each successful request, microseconds, sorted.
    pub latencies_us: Vec<u64>,
    pub seconds: f64,
    pub first_error: Option<String>,
}

impl Legit {
    pub fn total(&self) -> u64 {
        self.ok + self.failed
    }

    pub fn success_share(&self) -> f64 {
        if self.total() == 0 {
            0.0
        } else {
            self.ok as f64 / self.total() as f64
        }
    }

    pub fn requests_per_s(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }

    pub fn percentile_us(&self, p: f64) -> Option<u64> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let i = ((self.latencies_us.len() as f64 * p).ceil() as usize).saturating_sub(1);
        self.latencies_us
            .get(i.min(self.latencies_us.len() - 1))
            .copied()
    }
}

/// Sends HTTPS GETs from the client namespace to the gateway for `duration`: `connections`
/// workers, each on its own keep-alive connection, each waiting `pause` after every answer (zero:
/// closed loop, as fast as answers come). A request counts as failed if it errs, times out (2 s)
/// or is not a 200.
pub fn legit_client(
    topo: &Topology,
    pki: Arc<Pki>,
    connections: usize,
    pause: Duration,
    duration: Duration,
) -> Legit {
    in_netns(&topo.cl_ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let start = Instant::now();
            let until = tokio::time::Instant::now() + duration;
            let mut tasks = Vec::new();
            for _ in 0..connections {
                let client = web::https(&pki, "gw.test", false);
                tasks.push(tokio::spawn(async move {
                    let mut legit = Legit::default();
                    while tokio::time::Instant::now() < until {
                        let t = Instant::now();
                        let req =
                            web::get(&format!("https://{GW}:{TLS_PORT}/v1/items"), "gw.test", &[]);
                        let result = tokio::time::timeout(Duration::from_secs(2), async {
                            let response =
                                client.request(req).await.map_err(|e| format!("{e:?}"))?;
                            let status = response.status();
                            use http_body_util::BodyExt as _;
                            response
                                .into_body()
                                .collect()
                                .await
                                .map_err(|e| e.to_string())?;
                            if status == 200 {
                                Ok(())
                            } else {
                                Err(format!("status {status}"))
                            }
                        })
                        .await
                        .unwrap_or_else(|_| Err("timed out (2 s)".to_string()));
                        match result {
                            Ok(()) => {
                                legit.ok += 1;
                                legit.latencies_us.push(t.elapsed().as_micros() as u64);
                            }
                            Err(e) => {
                                legit.failed += 1;
                                legit.first_error.get_or_insert(e);
                            }
                        }
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    legit
                }));
            }
            let mut all = Legit::default();
            for task in tasks {
                let l = task.await.expect("client task");
                all.ok += l.ok;
                all.failed += l.failed;
                all.latencies_us.extend(l.latencies_us);
                if all.first_error.is_none() {
                    all.first_error = l.first_error;
                }
            }
            all.latencies_us.sort_unstable();
            all.seconds = start.elapsed().as_secs_f64();
            all
        })
    })
}

/// Waits (at most `limit`) until no `wrk` runs: someone else measures with it, and a flood would
/// spoil both measurements. Returns whether it is clear.
pub fn wait_for_quiet(limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        let busy = Command::new("pgrep")
            .args(["-x", "wrk"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !busy {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        thread::sleep(Duration::from_secs(5));
    }
}
