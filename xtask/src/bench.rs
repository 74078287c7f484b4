//! `cargo xtask bench ...`: benchmarks, one subcommand per layer.

mod flood;
mod proxy;
mod secured;

use std::fs;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};

use crate::{
    setup,
    util::{self, exec},
};

#[derive(Args, Debug)]
pub struct Options {
    #[command(subcommand)]
    pub bench: Bench,
}

#[derive(Subcommand, Debug)]
pub enum Bench {
    /// The XDP program: nanoseconds per packet per verdict, through BPF_PROG_TEST_RUN.
    /// Writes target/bench/xdp.json.
    Xdp(XdpOptions),
    /// The reverse proxy: wrk on loopback against a minimal upstream directly, through the
    /// gateway and through nginx, alternating. Writes target/bench/proxy.json.
    Proxy(proxy::Options),
    /// Flood absorption: a legitimate HTTPS client under a trafgen flood with XDP, with
    /// nftables and unprotected; receive CPU per dropped packet. Writes target/bench/flood.json.
    Flood(flood::Options),
}

#[derive(Args, Debug)]
pub struct XdpOptions {
    /// Further arguments for the xdp-bench binary.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(opts: Options) -> Result<()> {
    match opts.bench {
        Bench::Xdp(xdp) => bench_xdp(xdp),
        Bench::Proxy(proxy) => proxy::run(proxy),
        Bench::Flood(flood) => flood::run(flood),
    }
}

fn bench_xdp(opts: XdpOptions) -> Result<()> {
    util::require_root(
        "cargo xtask bench xdp",
        "it loads XDP programs into the kernel",
    )?;
    setup::run()?;
    util::build_gateway(true)?;
    let out_dir = util::target_dir().join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let out = out_dir.join("xdp.json");
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
                "xdp-bench",
                "--",
            ])
            .arg("--out")
            .arg(&out)
            .args(&opts.args),
    )?;
    println!("results: {}", out.display());
    Ok(())
}
