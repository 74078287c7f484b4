//! `cargo xtask bench flood`: the legitimate client's throughput and p99 with no flood, with a
//! flood and XDP, with the same blocklist in nftables (netdev ingress) and with no protection,
//! plus packets dropped per second and the gateway's receive CPU per dropped packet (over
//! several rounds, under a maximum and a fixed load), in one run.
//! The measuring is `tests/src/bin/flood_bench.rs` (it shares the flood test's namespaces, redirect
//! hop and trafgen runner); this module installs what it needs, builds and runs it.

use std::{fs, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{
    setup,
    util::{self, exec},
};

/// trafgen, the reference filter and the veth settings.
const DEBIAN_PACKAGES: &[&str] = &["netsniff-ng", "nftables", "ethtool"];

#[derive(Args, Debug)]
pub struct Options {
    /// Seconds of flood per measurement.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=30))]
    pub duration: u32,
    /// Rounds of the receive-CPU measurement.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rounds: u32,
    /// Rate of the fixed load in packets per second (trafgen); 0 leaves it out.
    #[arg(long, default_value_t = 100_000)]
    pub pps: u64,
    /// Where to write the results as JSON [default: target/bench/flood.json].
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
}

pub fn run(opts: Options) -> Result<()> {
    util::require_root(
        "cargo xtask bench flood",
        "it creates network namespaces and loads XDP programs",
    )?;
    setup::run()?;
    setup::debian_packages(DEBIAN_PACKAGES)?;
    util::build_gateway(true)?;
    let out = match opts.out {
        Some(out) => out,
        None => {
            let dir = util::target_dir().join("bench");
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.join("flood.json")
        }
    };
    exec(
        util::cargo()
            .env("GATEWAY_BIN", util::gateway_release_bin())
            .args([
                "run",
                "--profile",
                util::TOOLS_PROFILE,
                "-p",
                "integration-tests",
                "--bin",
                "flood-bench",
                "--",
            ])
            .arg("--out")
            .arg(&out)
            .args(["--duration", &opts.duration.to_string()])
            .args(["--rounds", &opts.rounds.to_string()])
            .args(["--pps", &opts.pps.to_string()]),
    )
}
