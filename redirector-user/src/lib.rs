//! The redirector daemon and CLI. See ARCHITECTURE.md for how the pieces fit.

pub mod config;
pub mod locality;
