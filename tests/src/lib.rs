//! Shared pieces of the integration tests and benchmarks: frame builders and the harness that
//! creates namespaces, veth pairs and real `gateway` daemons; HTTP upstreams, clients and a test
//! CA for the proxy tests.

pub mod flood;
pub mod frames;
pub mod harness;
pub mod idp;
pub mod web;
