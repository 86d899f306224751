//! The redirector daemon and CLI. See ARCHITECTURE.md for how the pieces fit.

pub mod admin;
pub mod app;
pub mod bpf;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dns;
pub mod endpoints;
pub mod handover;
pub mod health;
pub mod kube;
pub mod lb;
pub mod locality;
pub mod metrics;
pub mod outlier;
pub mod privs;
pub mod proxy;
pub mod resolve;
pub mod sys;
pub mod tls;
pub mod watch;
