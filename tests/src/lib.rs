//! Shared pieces of the integration tests and benchmarks: frame builders and the harness that
//! creates namespaces, veth pairs and real `gateway` daemons.

pub mod frames;
pub mod harness;
