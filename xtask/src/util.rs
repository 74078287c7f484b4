//! Helpers every verb uses: running and stopping commands with errors that name them, finding
//! the workspace, the root check.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// Runs `cmd` with inherited stdio; the error names the command and how it failed.
pub fn exec(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its standard output; on failure the error carries its standard error.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}\n{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", describe(cmd)))
}

/// The command line of `cmd` as a person would type it.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| {
            let arg = arg.to_string_lossy();
            if arg.is_empty() || arg.contains(char::is_whitespace) {
                format!("'{arg}'")
            } else {
                arg.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Stops `child` (`what` names it in warnings): SIGTERM, then up to `timeout` for it to exit,
/// then SIGKILL. Returns how it exited, or `None` when it had exited before.
pub fn stop(child: &mut Child, what: &str, timeout: Duration) -> Option<ExitStatus> {
    if let Ok(Some(_)) = child.try_wait() {
        return None;
    }
    // The child is not reaped yet, so its pid cannot have been reused.
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => thread::sleep(Duration::from_millis(50)),
            Err(_) => break,
        }
    }
    eprintln!(
        "warning: {what} did not stop within {} s of SIGTERM; killing it",
        timeout.as_secs()
    );
    let _ = child.kill();
    child.wait().ok()
}

/// A TOML basic string.
pub fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in a subdirectory of the workspace")
}

/// Cargo's target directory, honouring `CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The release build of the daemon, as `build_gateway(true)` leaves it.
pub fn gateway_release_bin() -> PathBuf {
    target_dir().join("release").join("gateway")
}

/// The Cargo profile of test binaries and benchmark tools (`Cargo.toml`): release without the
/// whole-program link, which only the shipped daemon gets.
pub const TOOLS_PROFILE: &str = "tools";

/// A binary built with [`TOOLS_PROFILE`].
pub fn tools_bin(name: &str) -> PathBuf {
    target_dir().join(TOOLS_PROFILE).join(name)
}

/// A `cargo` command (the same cargo that runs the xtask) in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// `cargo build -p gateway`; its build script builds the eBPF program through aya-build.
pub fn build_gateway(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "gateway"]);
    if release {
        cmd.arg("--release");
    }
    exec(&mut cmd)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails with a message saying why `what` needs root.
pub fn require_root(what: &str, why: &str) -> Result<()> {
    if !is_root() {
        bail!("`{what}` must run as root: {why} (try `sudo -E cargo xtask ...`)");
    }
    Ok(())
}

/// Appends Cargo's bin directory (where `cargo install` puts bpf-linker) to `PATH` when it is
/// missing, so both our checks and the rustc that aya-build starts find bpf-linker.
pub fn add_cargo_bin_to_path() {
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    let Some(bin) = cargo_home.map(|home| home.join("bin")) else {
        return;
    };
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&path).collect();
    if !bin.is_dir() || dirs.contains(&bin) {
        return;
    }
    dirs.push(bin);
    if let Ok(joined) = env::join_paths(dirs) {
        // Called first thing in `main`, before any other thread exists.
        env::set_var("PATH", joined);
    }
}
