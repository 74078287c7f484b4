//! `cargo xtask setup`: installs what building and testing need, each piece only when it is
//! missing, so it is cheap to run before every other verb.

use std::{collections::HashSet, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::util::{self, exec};

/// Debian packages: the first four are what bpf-linker links against, the rest are run by the
/// tests, the demo and the XDP benchmark (systemd for `systemd-analyze verify` of the unit,
/// util-linux for nsenter and setpriv, openssl for the demo's keys and tokens). The proxy benchmark installs its own on demand
/// (`bench::proxy::DEBIAN_PACKAGES`), so that a plain setup does not bring in nginx.
const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "iproute2",
    "xdp-tools",
    "bpftool",
    // The flood test: trafgen, and ethtool for the veth settings.
    "netsniff-ng",
    "ethtool",
    "systemd",
    "util-linux",
    "openssl",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> Result<()> {
    nightly_rust_src()?;
    // Before bpf-linker: it builds against llvm-22-dev.
    debian_packages(DEBIAN_PACKAGES)?;
    bpf_linker()?;
    Ok(())
}

/// aya-build compiles the eBPF crate with `-Z build-std=core`, which needs nightly's rust-src.
fn nightly_rust_src() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("could not run rustup: install it from https://rustup.rs")?;
    if !installed.status.success() {
        println!("installing the nightly toolchain with rust-src");
        return exec(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    }
    let has_rust_src = String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|line| line.split_whitespace().next() == Some("rust-src"));
    if has_rust_src {
        println!("ok: nightly toolchain with rust-src");
        return Ok(());
    }
    println!("installing rust-src for the nightly toolchain");
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// Installs those of `packages` that are missing (as root; otherwise says how).
pub fn debian_packages(packages: &[&str]) -> Result<()> {
    // dpkg-query exits non-zero when a package is unknown but still prints the others.
    let query = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\n"])
        .args(packages)
        .output()
        .context(
            "could not run dpkg-query: `cargo xtask setup` installs packages on Debian only",
        )?;
    let installed: HashSet<&str> = std::str::from_utf8(&query.stdout)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, status)| status.contains("install ok installed"))
        .map(|(package, _)| package)
        .collect();
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| !installed.contains(package))
        .collect();
    if missing.is_empty() {
        println!("ok: Debian packages ({})", packages.join(" "));
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "missing Debian packages: {list}\ninstall them as root:\n  apt-get update && apt-get install -y --no-install-recommends {list}",
            list = missing.join(" ")
        );
    }
    println!("installing Debian packages: {}", missing.join(" "));
    exec(Command::new("apt-get").arg("update"))?;
    exec(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
}

/// aya-build links the eBPF object with bpf-linker, built here against Debian's LLVM 22 (the
/// LLVM of our nightly rustc).
fn bpf_linker() -> Result<()> {
    // `main` has put Cargo's bin directory on PATH, so this finds a `cargo install`ed one too.
    let version = Command::new("bpf-linker").arg("--version").output();
    if let Ok(version) = &version {
        let stdout = String::from_utf8_lossy(&version.stdout);
        if version.status.success() && stdout.split_whitespace().any(|w| w == BPF_LINKER_VERSION) {
            println!("ok: bpf-linker {BPF_LINKER_VERSION}");
            return Ok(());
        }
    }
    println!("installing bpf-linker {BPF_LINKER_VERSION} (takes a minute or two)");
    // Both variables: llvm-sys reads LLVM_SYS_221_PREFIX, bpf-linker's own build script reads
    // LLVM_PREFIX (without it linking fails with `unable to find library -lLLVM`).
    exec(
        util::cargo()
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )
}
