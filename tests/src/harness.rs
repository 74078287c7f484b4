//! Network namespaces, veth pairs and real `gateway` daemons for tests.
//!
//! Everything created here is removed by `Drop`, so a failing (panicking) test cleans up too.
//! Names carry the process id and a counter, so concurrent runs never collide.

use std::{
    collections::HashMap,
    fs,
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The gateway binary under test: `$GATEWAY_BIN`, else target/release/gateway.
pub fn gateway_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("GATEWAY_BIN") {
        return PathBuf::from(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/gateway");
    assert!(
        path.exists(),
        "{} missing: run `cargo xtask test` (it builds it)",
        path.display()
    );
    path
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a thread that entered network namespace `ns`. Sockets created there stay in
/// that namespace wherever they are used afterwards.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    thread::spawn(move || {
        let file = fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// Two namespaces joined by a veth pair: the gateway side (`gw`, 198.18.0.1, 2001:db8::1) and
/// the client side (`cl`, 198.18.0.2, 2001:db8::2, plus any added source addresses).
pub struct Net {
    pub gw_ns: String,
    pub cl_ns: String,
    pub gw_if: String,
    pub cl_if: String,
    pub gw_mac: [u8; 6],
    pub cl_mac: [u8; 6],
}

pub const GW4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CL4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const GW6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const CL6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

fn mac_str(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Default for Net {
    fn default() -> Self {
        Net::new()
    }
}

impl Net {
    pub fn new() -> Net {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{:x}{:x}", pid & 0xfffff, n);
        let net = Net {
            gw_ns: format!("gwt-{tag}-gw"),
            cl_ns: format!("gwt-{tag}-cl"),
            gw_if: format!("gt{tag}g"),
            cl_if: format!("gt{tag}c"),
            gw_mac: [0x02, 0x42, 0xc6, 0x12, n as u8, 0x01],
            cl_mac: [0x02, 0x42, 0xc6, 0x12, n as u8, 0x02],
        };
        // From here on Drop removes whatever exists.
        sh("ip", &["netns", "add", &net.gw_ns]);
        sh("ip", &["netns", "add", &net.cl_ns]);
        let (g, c) = (net.gw_ns.as_str(), net.cl_ns.as_str());
        let (gmac, cmac) = (mac_str(net.gw_mac), mac_str(net.cl_mac));
        sh(
            "ip",
            &[
                "link", "add", &net.gw_if, "netns", g, "address", &gmac, "type", "veth", "peer",
                "name", &net.cl_if, "netns", c, "address", &cmac,
            ],
        );
        for (ns, dev) in [(g, &net.gw_if), (c, &net.cl_if)] {
            // No router solicitations, DAD or autoconf chatter: the counters see only our traffic.
            for key in [
                "all.router_solicitations=0",
                "default.router_solicitations=0",
                "all.accept_ra=0",
                "default.accept_ra=0",
            ] {
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
            sh("ip", &["-n", ns, "link", "set", "lo", "up"]);
            sh("ip", &["-n", ns, "link", "set", dev, "up"]);
        }
        sh(
            "ip",
            &["-n", g, "addr", "add", "198.18.0.1/24", "dev", &net.gw_if],
        );
        sh(
            "ip",
            &[
                "-n",
                g,
                "addr",
                "add",
                "2001:db8::1/64",
                "dev",
                &net.gw_if,
                "nodad",
            ],
        );
        sh(
            "ip",
            &["-n", c, "addr", "add", "198.18.0.2/24", "dev", &net.cl_if],
        );
        sh(
            "ip",
            &[
                "-n",
                c,
                "addr",
                "add",
                "2001:db8::2/64",
                "dev",
                &net.cl_if,
                "nodad",
            ],
        );
        // Static neighbours: a blocked source's ARP/NDP would be dropped too, and the tests
        // must not depend on resolution.
        for gw_addr in ["198.18.0.1", "2001:db8::1"] {
            let dev = net.cl_if.as_str();
            let args = [
                "-n",
                c,
                "neigh",
                "replace",
                gw_addr,
                "lladdr",
                &gmac,
                "dev",
                dev,
                "nud",
                "permanent",
            ];
            sh("ip", &args);
        }
        net
    }

    /// Adds a source address on the client side (IPv4 /32 or IPv6 /128) and a static neighbour
    /// for it on the gateway side.
    pub fn add_client_addr(&self, addr: IpAddr) {
        let (with_len, extra): (String, &[&str]) = match addr {
            IpAddr::V4(a) => (format!("{a}/32"), &[]),
            IpAddr::V6(a) => (format!("{a}/128"), &["nodad"]),
        };
        let mut args = vec![
            "-n",
            &self.cl_ns,
            "addr",
            "add",
            &with_len,
            "dev",
            &self.cl_if,
        ];
        args.extend_from_slice(extra);
        sh("ip", &args);
        let a = addr.to_string();
        sh(
            "ip",
            &[
                "-n",
                &self.gw_ns,
                "neigh",
                "replace",
                &a,
                "lladdr",
                &mac_str(self.cl_mac),
                "dev",
                &self.gw_if,
                "nud",
                "permanent",
            ],
        );
    }

    /// A UDP receiver on the gateway side, on every address, IPv4 and IPv6.
    pub fn receiver(&self, port: u16) -> Receiver {
        let socket = in_netns(&self.gw_ns, move || {
            UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).expect("bind receiver")
        });
        set_buffer(&socket, libc::SO_RCVBUF, 8 << 20);
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        Receiver { socket }
    }

    /// A UDP socket on the client side bound to `from` (an address of the client side).
    pub fn sender(&self, from: IpAddr) -> UdpSocket {
        let socket = in_netns(&self.cl_ns, move || {
            UdpSocket::bind(SocketAddr::new(from, 0)).expect("bind sender")
        });
        set_buffer(&socket, libc::SO_SNDBUF, 8 << 20);
        socket
    }

    /// Sends `count` datagrams of `payload` bytes from `from` to the gateway side's address of
    /// the same family, port `port`.
    pub fn send(&self, from: IpAddr, port: u16, count: usize, payload: usize) {
        let socket = self.sender(from);
        let to: IpAddr = if from.is_ipv4() {
            GW4.into()
        } else {
            GW6.into()
        };
        let data = vec![0x5a; payload];
        for _ in 0..count {
            send_retrying(&socket, &data, SocketAddr::new(to, port));
        }
    }

    /// An AF_PACKET socket on the client's veth: sends raw frames as they are.
    pub fn raw(&self) -> RawSocket {
        let ifname = self.cl_if.clone();
        in_netns(&self.cl_ns, move || RawSocket::open(&ifname))
    }

    /// An AF_PACKET socket on the gateway's veth: sees what XDP passed to the stack.
    pub fn tap(&self) -> RawSocket {
        let ifname = self.gw_if.clone();
        in_netns(&self.gw_ns, move || RawSocket::open(&ifname))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace destroys its end of the veth pair and with it the peer.
        for ns in [&self.gw_ns, &self.cl_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn set_buffer(socket: &UdpSocket, option: libc::c_int, bytes: libc::c_int) {
    // SAFETY: setsockopt with a valid fd and an int option.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            &bytes as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Sends, waiting briefly when the socket buffer is full, so nothing is lost before XDP.
pub fn send_retrying(socket: &UdpSocket, data: &[u8], to: SocketAddr) {
    for _ in 0..1000 {
        match socket.send_to(data, to) {
            Ok(_) => return,
            Err(e)
                if e.kind() == ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS) =>
            {
                thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("send to {to}: {e}"),
        }
    }
    panic!("send to {to}: buffer full for a second");
}

/// Counts datagrams by source.
pub struct Receiver {
    socket: UdpSocket,
}

impl Receiver {
    /// Reads until nothing arrives for 300 ms (at most 30 s); datagrams per source address.
    pub fn collect(&self) -> HashMap<IpAddr, usize> {
        let mut counts = HashMap::new();
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match self.socket.recv_from(&mut buf) {
                Ok((_, from)) => {
                    let ip = match from.ip() {
                        IpAddr::V6(v6) => v6
                            .to_ipv4_mapped()
                            .map(IpAddr::V4)
                            .unwrap_or(IpAddr::V6(v6)),
                        v4 => v4,
                    };
                    *counts.entry(ip).or_insert(0) += 1;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) => panic!("receive: {e}"),
            }
        }
        counts
    }
}

/// A raw packet socket bound to one interface.
pub struct RawSocket {
    fd: libc::c_int,
    ifindex: libc::c_int,
}

impl RawSocket {
    fn open(ifname: &str) -> RawSocket {
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: plain libc calls with checked results.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr()) as libc::c_int;
            assert!(ifindex > 0, "no interface {ifname}");
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                (libc::ETH_P_ALL as u16).to_be() as libc::c_int,
            );
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            addr.sll_ifindex = ifindex;
            let rc = libc::bind(
                fd,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            );
            assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
            RawSocket { fd, ifindex }
        }
    }

    /// Receives frames until none arrives for 300 ms (at most 30 s).
    pub fn receive_all(&self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(30);
        // SAFETY: a timeval for SO_RCVTIMEO, then recv into our buffer.
        unsafe {
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 300_000,
            };
            libc::setsockopt(
                self.fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            while Instant::now() < deadline {
                let n = libc::recv(self.fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
                if n <= 0 {
                    break;
                }
                frames.push(buf[..n as usize].to_vec());
            }
        }
        frames
    }

    /// Sends one frame exactly as given.
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: sockaddr_ll zeroed then filled; frame is a valid buffer.
        unsafe {
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = self.ifindex;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            let rc = libc::sendto(
                self.fd,
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            );
            assert_eq!(
                rc as usize,
                frame.len(),
                "raw send of {} bytes: {}",
                frame.len(),
                std::io::Error::last_os_error()
            );
        }
    }
}

impl Drop for RawSocket {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.fd) };
    }
}

/// A working directory with the config, the state directory and the admin socket of one
/// gateway under test, and its own bpffs pin directory; it outlives daemon restarts. Dropping
/// it detaches what is pinned there and removes the pins.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Err(e) = gateway::xdp::detach_pins(&self.pin_dir()) {
            eprintln!("cleanup of {}: {e}", self.pin_dir().display());
        }
    }
}

impl Default for Setup {
    fn default() -> Self {
        Setup::new()
    }
}

impl Setup {
    pub fn new() -> Setup {
        Setup {
            dir: tempfile::Builder::new()
                .prefix("gwtest-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// This setup's pin directory on bpffs: named after its working directory, so unique.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new("/sys/fs/bpf").join(self.dir.path().file_name().expect("tempdir name"))
    }

    /// Writes the config: XDP on `interface`, pinned under [`Setup::pin_dir`], plus `extra`
    /// TOML appended (tables after the `[xdp]` keys, so `extra` may add `[xdp.ratelimit]` and
    /// so on).
    pub fn write_config(&self, interface: &str, xdp_keys: &str, extra: &str) -> PathBuf {
        let path = self.dir.path().join("gateway.toml");
        let text = format!(
            "[xdp]\ninterface = \"{interface}\"\npin_dir = \"{}\"\n{xdp_keys}\n{extra}\n[state]\ndir = \"{}\"\n[admin]\nsocket = \"{}\"\n",
            self.pin_dir().display(),
            self.state_dir().display(),
            self.socket().display()
        );
        fs::write(&path, text).unwrap();
        path
    }

    /// Runs the CLI against this setup's socket.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(gateway_bin())
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("run gateway cli")
    }

    /// Runs the CLI and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "gateway {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI and asserts a one-line error and exit status 1; returns the error line.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(1),
            "gateway {} should fail with 1: {stderr}",
            args.join(" ")
        );
        assert!(
            stderr.starts_with("error: "),
            "not an error line: {stderr:?}"
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "error is not one line: {stderr:?}"
        );
        stderr.trim_end().to_string()
    }

    pub fn stats(&self) -> Value {
        serde_json::from_str(&self.ok(&["stats", "--json"])).expect("stats json")
    }

    /// (packets, bytes) of one verdict.
    pub fn verdict(&self, name: &str) -> (u64, u64) {
        let s = self.stats();
        let v = &s["verdicts"][name];
        (
            v["packets"].as_u64().expect("packets"),
            v["bytes"].as_u64().expect("bytes"),
        )
    }

    /// The nets of a list, as `gateway block|allow list --json` shows them.
    pub fn list(&self, list: &str) -> Vec<Value> {
        let v: Value =
            serde_json::from_str(&self.ok(&[list, "list", "--json"])).expect("list json");
        v.as_array().cloned().unwrap_or_default()
    }

    pub fn listed(&self, list: &str) -> Vec<String> {
        self.list(list)
            .iter()
            .map(|e| e["net"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// A running `gateway run` in the gateway namespace; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon with `config` in namespace `ns` and waits until its admin socket
    /// answers (it binds the socket only once XDP is attached). Panics with the log when it
    /// exits or does not come up within 30 s.
    pub fn start(ns: &str, setup: &Setup, config: &Path) -> Daemon {
        Daemon::spawn(in_netns_cmd(ns, &gateway_bin()), setup, config)
    }

    /// [`Daemon::start`] with `cmd` (run inside namespace `ns`) in front of the binary, e.g.
    /// `setpriv` with fewer capabilities.
    pub fn start_wrapped(ns: &str, setup: &Setup, config: &Path, wrapper: &[&str]) -> Daemon {
        let mut cmd = in_netns_cmd(ns, Path::new(wrapper[0]));
        cmd.args(&wrapper[1..]).arg(gateway_bin());
        Daemon::spawn(cmd, setup, config)
    }

    /// Starts the daemon in this namespace (for configs with XDP off).
    pub fn start_local(setup: &Setup, config: &Path) -> Daemon {
        Daemon::spawn(Command::new(gateway_bin()), setup, config)
    }

    fn spawn(mut cmd: Command, setup: &Setup, config: &Path) -> Daemon {
        let log = setup.dir.path().join(format!(
            "daemon-{}.log",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let log_file = fs::File::create(&log).unwrap();
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("spawn gateway");
        let mut daemon = Daemon {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::os::unix::net::UnixStream::connect(setup.socket()).is_ok() {
                return daemon;
            }
            if let Some(status) = daemon.child.as_mut().unwrap().try_wait().unwrap() {
                daemon.child = None;
                panic!("gateway exited ({status}) at start:\n{}", daemon.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not come up in 30 s:\n{}",
                daemon.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the daemon expecting it to fail at start; returns its exit code and log.
    pub fn start_fails(ns: &str, config: &Path) -> (Option<i32>, String) {
        let out = in_netns_cmd(ns, &gateway_bin())
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("spawn gateway");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&mut self, signal: libc::c_int) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // nsenter (and setpriv) exec the gateway, so the child pid is the gateway's.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> libc::pid_t {
        self.child.as_ref().expect("daemon running").id() as libc::pid_t
    }

    /// Sends SIGHUP (reload) without waiting.
    pub fn hup(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGHUP) };
    }

    /// SIGTERM and wait: returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM).expect("daemon already gone")
    }

    /// SIGKILL: a crash.
    pub fn kill(mut self) {
        self.signal(libc::SIGKILL);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.signal(libc::SIGTERM);
    }
}

/// `program` run in network namespace `ns` and nothing else: unlike `ip netns exec`, nsenter
/// leaves the mount namespace alone, so the daemon pins on the host's bpffs (as under
/// systemd), where the pins outlive it; `ip netns exec` would give it a private /sys whose
/// bpffs, and every pin in it, ends with the daemon.
pub fn in_netns_cmd(ns: &str, program: &Path) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/var/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    cmd
}

/// Whether XDP is attached to `dev` in namespace `ns` (any mode).
pub fn xdp_attached(ns: &str, dev: &str) -> bool {
    let out = sh("ip", &["-n", ns, "-d", "link", "show", "dev", dev]);
    out.contains("prog/xdp")
}
