//! `cargo xtask test`: every test of the workspace, in the order that fails fastest, stopping at
//! the first failure.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;

use crate::{
    setup,
    util::{self, exec},
};

#[derive(Args, Debug)]
pub struct Options {
    /// Arguments for the integration-test binary, e.g. a name filter: `cargo xtask test -- xdp_`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(opts: Options) -> Result<()> {
    util::require_root(
        "cargo xtask test",
        "the integration tests load XDP programs and create network namespaces",
    )?;
    let mut steps = Steps::default();
    let result = run_steps(&mut steps, &opts);
    steps.print_summary();
    result
}

fn run_steps(steps: &mut Steps, opts: &Options) -> Result<()> {
    steps.run("setup", setup::run)?;
    steps.run("unit tests: gateway-common", || {
        exec(util::cargo().args(["test", "-p", "gateway-common"]))
    })?;
    // The install layout and `systemd-analyze verify` of the unit.
    steps.run("unit tests: xtask", || {
        exec(util::cargo().args(["test", "-p", "xtask"]))
    })?;
    steps.run("build: gateway (release)", || util::build_gateway(true))?;
    steps.run("unit tests: gateway (tools profile)", || {
        exec(util::cargo().args(["test", "-p", "gateway", "--profile", util::TOOLS_PROFILE]))
    })?;
    // One at a time: the tests share kernel state (bpffs pins, XDP attachments).
    steps.run("integration tests", || {
        exec(
            util::cargo()
                .env("GATEWAY_BIN", util::gateway_release_bin())
                .args([
                    "test",
                    "-p",
                    "integration-tests",
                    "--profile",
                    util::TOOLS_PROFILE,
                ])
                .args(["--", "--test-threads=1"])
                .args(&opts.args),
        )
    })
}

/// Runs named steps and remembers how long each took.
#[derive(Default)]
struct Steps(Vec<(&'static str, Duration, bool)>);

impl Steps {
    fn run(&mut self, name: &'static str, step: impl FnOnce() -> Result<()>) -> Result<()> {
        println!("\n==> {name}");
        let start = Instant::now();
        let result = step();
        self.0.push((name, start.elapsed(), result.is_ok()));
        result
    }

    fn print_summary(&self) {
        println!("\nsummary:");
        for (name, took, ok) in &self.0 {
            let verdict = if *ok { "ok" } else { "FAILED" };
            println!("  {verdict:<6} {:>7.1} s  {name}", took.as_secs_f64());
        }
    }
}
