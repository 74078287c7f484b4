//! `cargo xtask install`: builds the release binary and installs it with the systemd unit, an
//! example config (never over the operator's) and the README:
//!
//! ```text
//! {destdir}{prefix}/bin/gateway                      0755
//! {destdir}{prefix}/share/doc/gateway/README.md      0644
//! {destdir}/etc/systemd/system/gateway.service       0644  ExecStart and ExecReload name the binary
//! {destdir}/etc/gateway/                             0700
//! {destdir}/etc/gateway/gateway.toml                 0600  only when there is none
//! {destdir}/etc/gateway/gateway.toml.example         0600  always: the example of this version
//! ```
//!
//! The state (/var/lib/gateway) and runtime (/run/gateway) directories are the unit's:
//! systemd creates them (StateDirectory=, RuntimeDirectory=).

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::{setup, util};

/// Where the unit file expects the binary unless `--prefix` says otherwise.
const UNIT_PREFIX: &str = "/usr/local";

#[derive(Args, Debug)]
pub struct Options {
    /// Installation prefix of the binary and the documentation.
    #[arg(long, default_value = UNIT_PREFIX, value_name = "DIR")]
    pub prefix: PathBuf,
    /// Staging directory prepended to every path (for packaging); the unit still names the
    /// final paths.
    #[arg(long, value_name = "DIR")]
    pub destdir: Option<PathBuf>,
    /// Install target/release/gateway as it is, without building first.
    #[arg(long)]
    pub no_build: bool,
}

pub fn run(opts: Options) -> Result<()> {
    if !opts.prefix.is_absolute() {
        bail!("--prefix {} is not an absolute path", opts.prefix.display());
    }
    if !opts.no_build {
        setup::run()?;
        util::build_gateway(true)?;
    }
    let binary = util::gateway_release_bin();
    if !binary.exists() {
        bail!(
            "{} missing: build it first (leave out --no-build)",
            binary.display()
        );
    }
    let destdir = opts.destdir.clone().unwrap_or_else(|| PathBuf::from("/"));
    let done = install_tree(&binary, util::workspace_root(), &opts.prefix, &destdir)?;
    for line in &done {
        println!("{line}");
    }
    let bin = opts.prefix.join("bin/gateway");
    println!(
        "\nnext:\n  edit /etc/gateway/gateway.toml (at least xdp.interface, and the auth key files it\n  names under /etc/gateway/keys/, or remove those providers), then\n  {bin} check-config /etc/gateway/gateway.toml\n  systemctl daemon-reload\n  systemctl enable --now gateway\n  {bin} stats",
        bin = bin.display()
    );
    Ok(())
}

/// `path` under `destdir`.
fn staged(destdir: &Path, path: &Path) -> PathBuf {
    destdir.join(path.strip_prefix("/").unwrap_or(path))
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Through a temporary file and a rename: a running binary is replaced, not rewritten.
    let tmp = to.with_extension("xtask-new");
    fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    fs::rename(&tmp, to).with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    let tmp = to.with_extension("xtask-new");
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    fs::rename(&tmp, to).with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))
}

/// The unit of `workspace` with the binary and documentation under `prefix`.
pub fn unit_for(workspace: &Path, prefix: &Path) -> Result<String> {
    let path = workspace.join("dist/gateway.service");
    let unit = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let prefix = prefix.to_str().context("--prefix is not UTF-8")?;
    Ok(unit
        .replace(
            &format!("{UNIT_PREFIX}/bin/gateway"),
            &format!("{prefix}/bin/gateway"),
        )
        .replace(
            &format!("{UNIT_PREFIX}/share/doc/gateway"),
            &format!("{prefix}/share/doc/gateway"),
        ))
}

/// Installs `binary` and the files of `workspace` under `destdir`; returns what it did, a
/// line each.
pub fn install_tree(
    binary: &Path,
    workspace: &Path,
    prefix: &Path,
    destdir: &Path,
) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let bin = staged(destdir, &prefix.join("bin/gateway"));
    copy(binary, &bin, 0o755)?;
    done.push(format!("installed {}", bin.display()));

    let doc = staged(destdir, &prefix.join("share/doc/gateway/README.md"));
    copy(&workspace.join("README.md"), &doc, 0o644)?;
    done.push(format!("installed {}", doc.display()));

    let unit = staged(destdir, Path::new("/etc/systemd/system/gateway.service"));
    write(&unit, &unit_for(workspace, prefix)?, 0o644)?;
    done.push(format!("installed {}", unit.display()));

    let etc = staged(destdir, Path::new("/etc/gateway"));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&etc)
        .with_context(|| format!("creating {}", etc.display()))?;
    let example = workspace.join("examples/gateway.toml");
    copy(&example, &etc.join("gateway.toml.example"), 0o600)?;
    done.push(format!(
        "installed {}",
        etc.join("gateway.toml.example").display()
    ));
    let config = etc.join("gateway.toml");
    if config.exists() {
        done.push(format!("kept {} (yours)", config.display()));
    } else {
        copy(&example, &config, 0o600)?;
        done.push(format!(
            "installed {} (the example: set xdp.interface)",
            config.display()
        ));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// A stand-in for the release binary.
    fn fake_binary(dir: &Path) -> PathBuf {
        let path = dir.join("gateway-bin");
        fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        path
    }

    #[test]
    fn install_lays_out_the_tree_and_keeps_the_operators_config() {
        let tmp = tempfile::tempdir().unwrap();
        let binary = fake_binary(tmp.path());
        let dest = tmp.path().join("dest");
        let workspace = util::workspace_root();
        install_tree(&binary, workspace, Path::new("/opt/gw"), &dest).unwrap();
        for (path, expected) in [
            ("opt/gw/bin/gateway", 0o755),
            ("opt/gw/share/doc/gateway/README.md", 0o644),
            ("etc/systemd/system/gateway.service", 0o644),
            ("etc/gateway", 0o700),
            ("etc/gateway/gateway.toml", 0o600),
            ("etc/gateway/gateway.toml.example", 0o600),
        ] {
            let path = dest.join(path);
            assert!(path.exists(), "{} missing", path.display());
            assert_eq!(mode(&path), expected, "{}", path.display());
        }
        let unit = fs::read_to_string(dest.join("etc/systemd/system/gateway.service")).unwrap();
        assert!(
            unit.contains("ExecStart=/opt/gw/bin/gateway run --config /etc/gateway/gateway.toml"),
            "{unit}"
        );
        assert!(unit.contains("ExecReload=/opt/gw/bin/gateway "), "{unit}");
        assert!(!unit.contains("/usr/local/"), "{unit}");
        let example = fs::read(workspace.join("examples/gateway.toml")).unwrap();
        assert_eq!(
            fs::read(dest.join("etc/gateway/gateway.toml")).unwrap(),
            example
        );
        // Nothing else: the state and runtime directories are systemd's to create.
        let mut top: Vec<String> = fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        assert_eq!(top, ["etc", "opt"]);

        // Again, over an operator's config: theirs stays, the example is refreshed.
        fs::write(dest.join("etc/gateway/gateway.toml"), "# mine\n").unwrap();
        fs::write(dest.join("etc/gateway/gateway.toml.example"), "# old\n").unwrap();
        let done = install_tree(&binary, workspace, Path::new("/opt/gw"), &dest).unwrap();
        assert!(done.iter().any(|l| l.starts_with("kept ")), "{done:?}");
        assert_eq!(
            fs::read_to_string(dest.join("etc/gateway/gateway.toml")).unwrap(),
            "# mine\n"
        );
        assert_eq!(
            fs::read(dest.join("etc/gateway/gateway.toml.example")).unwrap(),
            example
        );
    }

    /// `systemd-analyze verify` on the unit as installed, with its binary where the unit says.
    #[test]
    fn the_unit_passes_systemd_analyze_verify() {
        let tmp = tempfile::tempdir().unwrap();
        let binary = fake_binary(tmp.path());
        // A prefix that exists on this machine, so verify finds the binary; no DESTDIR.
        let prefix = tmp.path().join("prefix");
        let dest = tmp.path().join("dest");
        install_tree(&binary, util::workspace_root(), &prefix, &dest).unwrap();
        copy(&binary, &prefix.join("bin/gateway"), 0o755).unwrap();
        let unit = dest.join("etc/systemd/system/gateway.service");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .expect("systemd-analyze (Debian package systemd; `cargo xtask setup` installs it)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "systemd-analyze verify {}: {}\n{stderr}",
            unit.display(),
            out.status
        );
        // And the checked-in unit says what the daemon's defaults say.
        let unit = fs::read_to_string(unit).unwrap();
        for line in [
            "Type=notify",
            "Restart=on-failure",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "StateDirectory=gateway",
            "RuntimeDirectory=gateway",
            "ConfigurationDirectory=gateway",
            "--socket /run/gateway/admin.sock reload",
        ] {
            assert!(unit.lines().any(|l| l.contains(line)), "{line} missing");
        }
    }

    /// A deliberately broken unit fails the same check, so the check can fail.
    #[test]
    fn systemd_analyze_verify_catches_a_bad_unit() {
        let tmp = tempfile::tempdir().unwrap();
        let unit = tmp.path().join("broken.service");
        fs::write(
            &unit,
            "[Service]\nType=notify\nExecStart=/nonexistent/gateway run\nProtectSystem=bogus\n",
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .expect("systemd-analyze");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() || !stderr.trim().is_empty());
    }
}
