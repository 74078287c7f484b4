//! The daemon under systemd's `Type=notify`: the real binary started with `NOTIFY_SOCKET`
//! pointing at a datagram socket of the test, as systemd would. READY=1 must come only once
//! the proxy listens and the admin socket answers; RELOADING=1/READY=1 around a reload;
//! STOPPING=1 on SIGTERM. (The unit file itself is checked by `cargo test -p xtask`:
//! `systemd-analyze verify`.)

use std::{
    fs,
    net::{TcpListener, TcpStream},
    os::unix::net::{UnixDatagram, UnixStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::harness::{gateway_bin, Setup};

/// Receives notify datagrams until one contains `what` (at most `within`); returns them all.
fn until(socket: &UnixDatagram, what: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = text.lines().any(|l| l == what);
                seen.push(text);
                if done {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no {what} within {within:?}; got {seen:?}");
}

#[test]
fn readiness_reload_and_stop_are_notified() {
    let setup = Setup::new();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = setup.dir.path().join("gateway.toml");
    fs::write(
        &config,
        format!(
            "[xdp]\nenabled = false\n[proxy]\nlisten = [\"127.0.0.1:{port}\"]\n[state]\ndir = \"{}\"\n[admin]\nsocket = \"{}\"\n",
            setup.state_dir().display(),
            setup.socket().display()
        ),
    )
    .unwrap();
    let notify_path = setup.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let log = setup.dir.path().join("daemon.log");
    /// Killed on drop, so a failing test leaves no daemon behind.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(
        Command::new(gateway_bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn gateway"),
    );
    let pid = child.0.id();
    // Nothing before READY=1 may claim readiness, and when it comes everything answers.
    let messages = until(&notify, "READY=1", Duration::from_secs(30));
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "READY=1 before the proxy listens: {messages:?}"
    );
    assert!(
        UnixStream::connect(setup.socket()).is_ok(),
        "READY=1 before the admin socket answers"
    );
    let ready = messages.last().unwrap();
    assert!(ready.contains(&format!("MAINPID={pid}")), "{ready}");
    assert!(child.0.try_wait().unwrap().is_none(), "the daemon exited");

    // Reload by signal and through the admin socket (as ExecReload does).
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
    let messages = until(&notify, "RELOADING=1", Duration::from_secs(10));
    assert!(
        messages.last().unwrap().contains("MONOTONIC_USEC="),
        "{messages:?}"
    );
    until(&notify, "READY=1", Duration::from_secs(10));
    assert!(setup.ok(&["reload"]).contains("reloaded"));
    until(&notify, "RELOADING=1", Duration::from_secs(10));
    until(&notify, "READY=1", Duration::from_secs(10));

    // Stop.
    // SAFETY: as above.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    until(&notify, "STOPPING=1", Duration::from_secs(10));
    let status = child.0.wait().unwrap();
    assert!(
        status.success(),
        "{status}: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
}
