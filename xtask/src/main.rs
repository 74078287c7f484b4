//! Everything beyond `cargo build`: toolchain set-up, installing, tests, benchmarks and the demo.
//! Run it as `cargo xtask <verb>` (an alias in `.cargo/config.toml`).

mod bench;
mod demo;
mod install;
mod jwt;
mod setup;
mod test;
mod util;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask",
    about = "Build, test, benchmark and demo the gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand, Debug)]
enum Verb {
    /// Install what building needs (nightly rust-src, LLVM 22, bpf-linker, test tools); fast when
    /// everything is there.
    Setup,
    /// Build the daemon and its XDP program: target/{debug,release}/gateway.
    Build(BuildOptions),
    /// Build the release binary and install it with the systemd unit and an example config
    /// (an existing /etc/gateway/gateway.toml is kept); then `systemctl enable --now gateway`.
    Install(install::Options),
    /// Run every test (as root: the integration tests load XDP programs).
    Test(test::Options),
    /// Run a benchmark.
    Bench(bench::Options),
    /// Build, then tell the whole story in network namespaces (as root): authorised,
    /// unauthorised and malicious requests, an auto-ban, a flood, and what the gateway counted.
    Demo(demo::Options),
    /// Send UDP datagrams from given sources (used by the demo inside a namespace).
    #[command(hide = true)]
    DemoSend(demo::SendOptions),
    /// Serve HTTP as a named upstream (used by the demo inside a namespace).
    #[command(hide = true)]
    DemoUpstream(demo::UpstreamOptions),
}

#[derive(Args, Debug)]
struct BuildOptions {
    /// Build with the release profile.
    #[arg(long)]
    release: bool,
}

fn main() -> Result<()> {
    util::add_cargo_bin_to_path();
    match Cli::parse().command {
        Verb::Setup => setup::run(),
        Verb::Build(opts) => {
            setup::run()?;
            util::build_gateway(opts.release)
        }
        Verb::Install(opts) => install::run(opts),
        Verb::Test(opts) => test::run(opts),
        Verb::Bench(opts) => bench::run(opts),
        Verb::Demo(opts) => demo::run(opts),
        Verb::DemoSend(opts) => demo::send(opts),
        Verb::DemoUpstream(opts) => demo::upstream(opts),
    }
}
