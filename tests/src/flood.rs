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
//! Two flood generators: trafgen in the attacker namespace, whose frames the redirect hop turns
//! into XDP frames (after veth has copied each one out of its socket buffer), and
//! [`xdp_flood`], which makes XDP frames in the hop itself with `BPF_PROG_TEST_RUN` (live frames,
//! from a page pool, as a NIC driver's are) and redirects them the same way, several times
//! faster on one core.
//!
//! Every name carries the process id and a counter; `Drop` removes the namespaces (and with them
//! the veths and the XDP links), also when a test panics.

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
    pub fn redirect_hop(&self) -> XdpLink {
        let (a1, h0) = (self.a1.clone(), self.h0.clone());
        in_netns(&self.hop_ns, move || XdpLink::redirect(&a1, &h0))
    }

    /// Attaches a program that passes every frame to `g0`, so that frames arrive there as XDP
    /// frames and take the same path into the stack whether or not the gateway's program is
    /// attached. Detached when the returned value drops.
    pub fn pass_on_g0(&self) -> XdpLink {
        let g0 = self.g0.clone();
        in_netns(&self.gw_ns, move || XdpLink::pass(&g0))
    }

    /// Attaches a program that drops every frame to `g0`.
    pub fn drop_on_g0(&self) -> XdpLink {
        let g0 = self.g0.clone();
        in_netns(&self.gw_ns, move || XdpLink::drop_all(&g0))
    }

    /// The kernel thread of `g0`'s NAPI instance (threaded mode): its pid.
    pub fn napi_thread(&self) -> Option<i32> {
        napi_thread(&self.g0)
    }

    /// Pins `g0`'s NAPI thread to `cpu`; returns its pid.
    pub fn pin_napi(&self, cpu: usize) -> i32 {
        let pid = self.napi_thread().expect("g0 has a NAPI thread");
        sh("taskset", &["-p", "-c", &cpu.to_string(), &pid.to_string()]);
        pid
    }

    /// Gives `h0` (the hop's end facing the gateway) a threaded NAPI instance pinned to `cpu`:
    /// what the gateway sends (answers to the flood, when nothing drops it) is then received
    /// and routed by the hop on that CPU, not in a softirq on the gateway's receive CPU, where
    /// it would be charged to the gateway's receive thread.
    pub fn hop_receives_on(&self, cpu: usize) {
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.hop_ns,
                "ethtool",
                "-K",
                &self.h0,
                "gro",
                "on",
            ],
        );
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.hop_ns,
                "sh",
                "-c",
                &format!("echo 1 > /sys/class/net/{}/threaded", self.h0),
            ],
        );
        let pid = napi_thread(&self.h0).expect("h0 has a NAPI thread");
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

/// CPU time of a thread, in nanoseconds: the scheduler's own sum of its run time
/// (`/proc/PID/schedstat`, first field), exact rather than sampled in clock ticks. Without
/// `CONFIG_IRQ_TIME_ACCOUNTING` (as here) it includes interrupts and softirqs that ran while the
/// thread was on the CPU.
pub fn cpu_ns(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// How often a thread went to sleep (voluntary context switches): for a NAPI thread, the number
/// of times it was woken to poll.
pub fn sleeps(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Runs thread `pid` under SCHED_FIFO at `priority`: like softirq processing, it then runs as
/// soon as it is woken instead of waiting behind whatever else shares its CPU.
pub fn realtime(pid: i32, priority: i32) {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: a valid sched_param for the duration of the call.
    let rc = unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param) };
    assert_eq!(
        rc,
        0,
        "SCHED_FIFO for thread {pid}: {}",
        std::io::Error::last_os_error()
    );
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

/// A tiny XDP program loaded and attached (native mode, through a BPF link) with raw syscalls:
/// the redirect hop and the bench's `XDP_PASS` need nothing more, and writing them as bytecode
/// keeps a second eBPF build out of the workspace. Detached when dropped (or when its interface
/// goes).
pub struct XdpLink {
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
const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;

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

/// The index of interface `name` in the calling thread's namespace.
fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i > 0, "no interface {name}");
    i
}

impl XdpLink {
    /// `return bpf_redirect(ifindex(to), 0)` on `on`. Must run inside the namespace of both
    /// interfaces.
    pub fn redirect(on: &str, to: &str) -> XdpLink {
        let program = [
            insn(0xb7, 1, 0, 0, ifindex(to) as i32), // r1 = ifindex (mov64 imm)
            insn(0xb7, 2, 0, 0, 0),                  // r2 = 0 (flags)
            insn(0x85, 0, 0, 0, BPF_FUNC_REDIRECT),  // call bpf_redirect
            insn(0x95, 0, 0, 0, 0),                  // exit
        ];
        XdpLink::attach(on, b"flood_redir", &program)
    }

    /// `return XDP_PASS` on `on`. Must run inside `on`'s namespace.
    pub fn pass(on: &str) -> XdpLink {
        let program = [
            insn(0xb7, 0, 0, 0, XDP_PASS), // r0 = XDP_PASS
            insn(0x95, 0, 0, 0, 0),        // exit
        ];
        XdpLink::attach(on, b"flood_pass", &program)
    }

    /// Reads the frame's IPv4 source address and returns `XDP_DROP` on `on`: about the least a
    /// drop by source address can cost. Must run inside `on`'s namespace.
    pub fn drop_all(on: &str) -> XdpLink {
        let program = [
            insn(0x61, 2, 1, 0, 0),        // r2 = ctx->data
            insn(0x61, 3, 1, 4, 0),        // r3 = ctx->data_end
            insn(0xb7, 0, 0, 0, XDP_DROP), // r0 = XDP_DROP
            insn(0xbf, 4, 2, 0, 0),        // r4 = r2
            insn(0x07, 4, 0, 0, 30),       // r4 += 30
            insn(0x2d, 4, 3, 1, 0),        // if r4 > data_end goto exit
            insn(0x61, 0, 2, 26, 0),       // r0 = *(u32 *)(r2 + 26): the source address
            insn(0xb7, 0, 0, 0, XDP_DROP), // r0 = XDP_DROP
            insn(0x95, 0, 0, 0, 0),        // exit
        ];
        XdpLink::attach(on, b"flood_drop", &program)
    }

    fn attach(on: &str, name: &[u8], program: &[u64]) -> XdpLink {
        let prog = XdpLink::load(name, program);
        let attr = LinkCreateAttr {
            prog_fd: prog.as_raw_fd() as u32,
            target_ifindex: ifindex(on),
            attach_type: BPF_XDP,
            flags: XDP_FLAGS_DRV_MODE,
        };
        let link = bpf(
            BPF_LINK_CREATE,
            &attr as *const _ as *const libc::c_void,
            std::mem::size_of::<LinkCreateAttr>(),
        )
        .unwrap_or_else(|e| {
            panic!(
                "attaching XDP program {} to {on}: {e}",
                String::from_utf8_lossy(name)
            )
        });
        // SAFETY: a new fd the kernel just returned to us.
        let link = unsafe { OwnedFd::from_raw_fd(link) };
        XdpLink {
            _prog: prog,
            _link: link,
        }
    }

    /// Loads an XDP program; returns its fd.
    fn load(name: &[u8], program: &[u64]) -> OwnedFd {
        let license = b"GPL\0";
        let mut prog_name = [0u8; 16];
        prog_name[..name.len()].copy_from_slice(name);
        let load = |log: &mut [u8]| {
            let attr = ProgLoadAttr {
                prog_type: BPF_PROG_TYPE_XDP,
                insn_cnt: program.len() as u32,
                insns: program.as_ptr() as u64,
                license: license.as_ptr() as u64,
                log_level: u32::from(!log.is_empty()),
                log_size: log.len() as u32,
                log_buf: if log.is_empty() {
                    0
                } else {
                    log.as_mut_ptr() as u64
                },
                prog_name,
                ..Default::default()
            };
            bpf(
                BPF_PROG_LOAD,
                &attr as *const _ as *const libc::c_void,
                std::mem::size_of::<ProgLoadAttr>(),
            )
        };
        // Without a log first: a verbose verifier log that does not fit fails the load.
        let prog = load(&mut []).unwrap_or_else(|e| {
            let mut log = vec![0u8; 1 << 20];
            let _ = load(&mut log);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            panic!(
                "loading XDP program {}: {e}\n{}",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(&log[..end])
            )
        });
        // SAFETY: a new fd the kernel just returned to us.
        unsafe { OwnedFd::from_raw_fd(prog) }
    }
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
const BPF_FUNC_GET_PRANDOM_U32: i32 = 7;

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// The IP ID, TCP sequence number and source port the templates of [`xdp_flood`] carry, and
/// around which its program varies them.
const TEMPLATE_ID: u16 = 0x1000;
const TEMPLATE_SPORT: u16 = 0x8000;
const TEMPLATE_SEQ: u32 = 0x8000_1000;

/// A 60-byte IPv4 frame of `kind` (UDP or TCP SYN) from `198.19.255.0` to the gateway's TLS
/// port, checksums right, with the template fields above.
fn template(kind: Flood, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    fn sum(bytes: &[u8]) -> u32 {
        bytes
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum()
    }
    fn fold(mut s: u32) -> u16 {
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }
    let tcp = matches!(kind, Flood::SynBlocked | Flood::SynRate);
    let (proto, l4_len) = if tcp { (6u8, 20u16) } else { (17, 26) };
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_start = f.len();
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&(20 + l4_len).to_be_bytes());
    f.extend_from_slice(&TEMPLATE_ID.to_be_bytes());
    f.extend_from_slice(&0x4000u16.to_be_bytes());
    f.extend_from_slice(&[64, proto, 0, 0]);
    f.extend_from_slice(&[198, 19, 255, 0]);
    f.extend_from_slice(&GW.octets());
    let c = fold(sum(&f[ip_start..ip_start + 20]));
    f[ip_start + 10..ip_start + 12].copy_from_slice(&c.to_be_bytes());
    let l4 = f.len();
    f.extend_from_slice(&TEMPLATE_SPORT.to_be_bytes());
    f.extend_from_slice(&TLS_PORT.to_be_bytes());
    if tcp {
        f.extend_from_slice(&TEMPLATE_SEQ.to_be_bytes());
        f.extend_from_slice(&0u32.to_be_bytes());
        f.extend_from_slice(&[0x50, 0x02]);
        f.extend_from_slice(&64240u16.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        let mut pseudo = f[ip_start + 12..ip_start + 20].to_vec();
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&20u16.to_be_bytes());
        let c = fold(sum(&pseudo) + sum(&f[l4..l4 + 20]));
        f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    } else {
        // UDP checksum 0: none, valid over IPv4.
        f.extend_from_slice(&26u16.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&[0x5a; 18]);
    }
    f.resize(60, 0);
    f
}

/// The generator's XDP program: gives each frame a random host of `198.19.255.0/24` and a random
/// source port, keeps the checksums right without recomputing them (the IP ID, and for TCP the
/// sequence number, change by as much as the address and the port, the other way), and
/// redirects it to `to_index`.
fn generator_program(to_index: u32) -> Vec<u64> {
    let (r0, r1, r2, r3, r4, r5, r6, r7, r8, r9) = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9);
    let mov = |d, s| insn(0xbf, d, s, 0, 0);
    let movi = |d, imm| insn(0xb7, d, 0, 0, imm);
    let ldxw = |d, s, off| insn(0x61, d, s, off, 0);
    let ldxb = |d, s, off| insn(0x71, d, s, off, 0);
    let stxb = |d, off, s| insn(0x73, d, s, off, 0);
    let rsh = |d, imm| insn(0x77, d, 0, 0, imm);
    let and = |d, imm| insn(0x57, d, 0, 0, imm);
    let sub = |d, s| insn(0x1f, d, s, 0, 0);
    let program = vec![
        mov(r6, r1),
        ldxw(r7, r6, 0), // data
        ldxw(r8, r6, 4), // data_end
        mov(r2, r7),
        insn(0x07, r2, 0, 0, 42), // r2 += 42: through the TCP sequence number
        insn(0x2d, r2, r8, 31, 0), // if r2 > data_end goto drop
        insn(0x85, 0, 0, 0, BPF_FUNC_GET_PRANDOM_U32),
        mov(r9, r0),
        rsh(r9, 8),
        and(r9, 0x7fff),  // r9: port offset s
        and(r0, 0xff),    // r0: host h
        stxb(r7, 29, r0), // last address byte = h
        movi(r1, i32::from(TEMPLATE_ID)),
        sub(r1, r0), // r1 = ID - h
        mov(r2, r1),
        rsh(r2, 8),
        stxb(r7, 18, r2),
        stxb(r7, 19, r1),
        mov(r4, r9),
        rsh(r4, 8),
        insn(0x47, r4, 0, 0, 0x80), // r4 |= 0x80
        stxb(r7, 34, r4),           // source port = 0x8000 + s
        stxb(r7, 35, r9),
        ldxb(r3, r7, 23),        // IP protocol
        insn(0x55, r3, 0, 8, 6), // if not TCP goto redirect
        stxb(r7, 40, r2),        // sequence number, low half = ID - h
        stxb(r7, 41, r1),
        movi(r5, i32::from(TEMPLATE_SPORT)),
        sub(r5, r9), // high half = 0x8000 - s
        mov(r4, r5),
        rsh(r4, 8),
        stxb(r7, 38, r4),
        stxb(r7, 39, r5),
        // redirect:
        movi(r1, to_index as i32),
        movi(r2, 0),
        insn(0x85, 0, 0, 0, BPF_FUNC_REDIRECT),
        insn(0x95, 0, 0, 0, 0),
        // drop:
        movi(r0, XDP_DROP),
        insn(0x95, 0, 0, 0, 0),
    ];
    debug_assert_eq!(program.len(), 39);
    program
}

/// Floods `g0` for `seconds` with XDP frames made in the hop by `BPF_PROG_TEST_RUN` in
/// live-frames mode (as xdp-trafficgen does), as fast as one core makes them: frames from a
/// page pool, as a NIC driver's are, each given a random host of [`BLOCKED_NET`] and a random
/// source port by a small XDP program and redirected into `h0`, hence into `g0`'s receive ring;
/// UDP and TCP SYN in turn, 65,536 frames at a time. Without trafgen's socket, the copy into an
/// XDP frame at the hop and the hop's NAPI, one core makes them several times faster. Runs on
/// `cpu`. Frames that find `g0`'s ring full are dropped at the hop ([`Topology::hop_losses`]).
pub fn xdp_flood(topo: &Topology, seconds: f64, cpu: usize) -> Sent {
    let dst = parse_mac(&topo.g0_mac());
    let src = parse_mac(&mac(&topo.hop_ns, &topo.h0));
    let h0 = topo.h0.clone();
    in_netns(&topo.hop_ns, move || {
        // SAFETY: a zeroed cpu_set_t with one bit set, for this thread only.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
        let program = generator_program(ifindex(&h0));
        let prog = XdpLink::load(b"flood_gen", &program);
        let frames = [
            template(Flood::UdpBlocked, dst, src),
            template(Flood::SynBlocked, dst, src),
        ];
        const BURST: u32 = 1 << 16;
        let start = Instant::now();
        let until = start + Duration::from_secs_f64(seconds);
        let mut sent = 0u64;
        for frame in frames.iter().cycle() {
            if Instant::now() >= until {
                break;
            }
            let attr = TestRunAttr {
                prog_fd: prog.as_raw_fd() as u32,
                data_size_in: frame.len() as u32,
                data_in: frame.as_ptr() as u64,
                repeat: BURST,
                flags: BPF_F_TEST_XDP_LIVE_FRAMES,
                batch_size: 64,
                ..Default::default()
            };
            bpf(
                BPF_PROG_TEST_RUN,
                &attr as *const _ as *const libc::c_void,
                std::mem::size_of::<TestRunAttr>(),
            )
            .unwrap_or_else(|e| panic!("running the flood generator: {e}"));
            sent += u64::from(BURST);
        }
        Sent {
            packets: sent,
            tx_packets: sent,
            seconds: start.elapsed().as_secs_f64(),
        }
    })
}

fn parse_mac(text: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).expect("a MAC address");
    }
    mac
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The one's-complement sum of `bytes` folded to 16 bits: 0xffff over a header whose
    /// checksum is right.
    fn folded(bytes: &[u8]) -> u16 {
        let mut s: u32 = bytes
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    fn checksums_right(f: &[u8]) -> bool {
        let ip = &f[14..34];
        let ip_ok = folded(ip) == 0xffff;
        let tcp_ok = f[23] != 6 || {
            let mut pseudo = f[26..34].to_vec();
            pseudo.extend_from_slice(&[0, 6, 0, 20]);
            pseudo.extend_from_slice(&f[34..54]);
            folded(&pseudo) == 0xffff
        };
        ip_ok && tcp_ok
    }

    /// What `generator_program` does to a frame, for host `h` and port offset `s`.
    fn vary(f: &mut [u8], h: u8, s: u16) {
        f[29] = h;
        let id = TEMPLATE_ID - u16::from(h);
        f[18..20].copy_from_slice(&id.to_be_bytes());
        f[34..36].copy_from_slice(&(TEMPLATE_SPORT | s).to_be_bytes());
        if f[23] == 6 {
            f[40..42].copy_from_slice(&id.to_be_bytes());
            f[38..40].copy_from_slice(&(TEMPLATE_SPORT - s).to_be_bytes());
        }
    }

    #[test]
    fn the_generator_keeps_checksums_right() {
        for kind in [Flood::UdpBlocked, Flood::SynBlocked] {
            let template = template(kind, [2; 6], [4; 6]);
            assert_eq!(template.len(), 60);
            assert!(checksums_right(&template), "{kind:?} template");
            for (h, s) in [(0, 0), (1, 1), (255, 0x7fff), (77, 12345), (128, 0x4000)] {
                let mut f = template.clone();
                vary(&mut f, h, s);
                assert!(
                    checksums_right(&f),
                    "{kind:?} from host {h}, port offset {s}"
                );
                assert_eq!(&f[26..30], &[198, 19, 255, h]);
            }
        }
    }

    #[test]
    fn the_generator_program_has_its_jumps_right() {
        let program = generator_program(7);
        let op = |i: usize| program[i] as u8;
        let off = |i: usize| (program[i] >> 16) as u16 as i16;
        // The bounds check jumps to `r0 = XDP_DROP; exit`, the protocol check to the redirect.
        let drop = (5 + 1 + off(5)) as usize;
        assert_eq!(
            (op(5), op(drop), (program[drop] >> 32) as i32),
            (0x2d, 0xb7, XDP_DROP)
        );
        let redirect = (24 + 1 + off(24)) as usize;
        assert_eq!(
            (op(24), op(redirect), (program[redirect] >> 32) as i32),
            (0x55, 0xb7, 7)
        );
        assert_eq!(op(program.len() - 1), 0x95);
    }
}
