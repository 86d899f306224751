//! The redirector's test bed: network namespaces joined by veth, child
//! cgroups, real HTTP/HTTPS/TCP/DNS servers, a test CA, the daemon under
//! test and clients, all named after the test process so leftovers can be
//! swept, and the benchmark's upstream processes.
//!
//! Used by the root-only integration tests in this package and by
//! `cargo xtask demo`. Traffic only ever goes to loopback or to addresses
//! inside namespaces the bed created. [`scenario::Node`] is one node as most
//! tests use it, [`istio`] the documents they configure it with and
//! [`origination`] its HTTPS variant; [`pod`] puts pods on it, made by the
//! real CNI plugins ([`cni`]). What each test file covers is listed
//! in ARCHITECTURE.md, section "Tests".

pub mod cgroup;
pub mod client;
pub mod cni;
pub mod daemon;
pub mod dns;
pub mod echo;
pub mod http;
pub mod https;
pub mod image;
pub mod istio;
pub mod kubeapi;
pub mod manifest;
pub mod mounts;
pub mod names;
pub mod netns;
pub mod origination;
pub mod pki;
pub mod pod;
pub mod privilege;
pub mod process;
pub mod rogue;
mod runtime;
pub mod scenario;
mod serve;
pub mod sweep;
pub mod tcp;
pub mod tempdir;
pub mod upstream;
pub mod websocket;
