//! The gateway daemon and its command-line client.
//!
//! - [`config`]: the TOML configuration, validated with errors that name file, line and key.
//! - [`net`]: strict parsing of addresses and networks as operators type them.
//! - [`lists`]: the blocklist and allowlist, their TTLs and the state file they persist to.
//! - [`autoban`]: rules that put clients the proxy keeps refusing on the blocklist.
//! - [`drops`]: drop events from the XDP program: audit lines, metrics, the top dropped sources.
//! - [`xdp`]: loading and attaching the XDP program and keeping its maps in step with the lists.
//! - [`proxy`]: the reverse proxy: listeners, routing, forwarding to upstream pools.
//! - [`tls`]: certificates for the listeners (SNI) and the upstreams (CA, client certificates).
//! - [`audit`]: the audit log, one JSON line per request.
//! - [`metrics`]: Prometheus metrics and the HTTP listener that serves them.
//! - [`admin`]: the local admin socket the CLI talks to, and its protocol.
//! - [`daemon`]: `gateway run`, tying the above together.
//! - [`notify`]: readiness, reloads and stopping reported to systemd (`Type=notify`).
//! - [`cli`]: the `gateway` command line.

pub mod admin;
pub mod audit;
pub mod autoban;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod drops;
pub mod lists;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod proxy;
pub mod tls;
pub mod xdp;
