//! Network namespaces for the demo: running a closure or a program inside one, and finding
//! what crashed earlier runs left behind.

use std::{
    fs,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    thread,
};

use anyhow::{bail, Context as _, Result};

/// Runs `f` on a thread that entered network namespace `ns` (a namespace is per thread, so
/// the rest of the demo stays where it is). Sockets made there stay in that namespace.
pub fn run_in<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = netns_path(ns);
    thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            let file =
                fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: setns on this thread only, with a namespace fd we hold open.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!(
                    "entering {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `program` in network namespace `ns`, and nothing else: nsenter leaves the mount namespace
/// alone (`ip netns exec` would give the daemon a private /sys), and execs `program`, so the
/// child's pid is the program's. The child gets SIGTERM when the demo dies, however it dies
/// (`PR_SET_PDEATHSIG`; spawn it from the main thread, since the signal follows the thread
/// that forked).
pub fn command_in(ns: &str, program: &Path) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns_path(ns).display()))
        .arg("--")
        .arg(program);
    // SAFETY: getpid, prctl and getppid are async-signal-safe, and nothing else runs between
    // fork and exec.
    unsafe {
        let parent = libc::getpid();
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the demo exited"));
            }
            Ok(())
        });
    }
    cmd
}

pub fn netns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

/// The prefix of every name the demo gives: namespaces `gwdemo-<pid>-<role>`, the directory
/// `<tmp>/gwdemo-<pid>`.
pub const PREFIX: &str = "gwdemo-";

/// The pid in `name` if it is one the demo gives (`gwdemo-<pid>` or `gwdemo-<pid>-<role>`).
pub fn demo_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits = rest.split_once('-').map_or(rest, |(d, _)| d);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether `name` was left by a demo run that no longer runs: its pid is not a process (a
/// reused pid makes a leftover look alive, which only delays its removal).
pub fn is_stale(name: &str) -> bool {
    demo_pid(name).is_some_and(|pid| {
        pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_names_carry_the_pid() {
        assert_eq!(demo_pid("gwdemo-123-client"), Some(123));
        assert_eq!(demo_pid("gwdemo-123"), Some(123));
        assert_eq!(demo_pid("gwdemo--client"), None);
        assert_eq!(demo_pid("gwdemo-12a-gw"), None);
        assert_eq!(demo_pid("gwt-123-gw"), None);
        assert!(!is_stale(&format!("gwdemo-{}-gw", std::process::id())));
        assert!(!is_stale("other-1"));
        // Pids above the kernel's limit (4194304) never run.
        assert!(is_stale("gwdemo-4999999-gw"));
    }
}
