//! Types and pure logic shared by the XDP program (`gateway-ebpf`) and the daemon (`gateway`).
//!
//! Everything here is `no_std`, allocation-free and small enough for the BPF verifier, so the
//! same code that runs per packet in the kernel is unit-tested, property-tested and fuzzed in
//! userspace.
#![no_std]

pub mod hash;
pub mod maps;
pub mod net;
pub mod parse;
pub mod ratelimit;

pub use maps::{Counter, Settings, Verdict};
