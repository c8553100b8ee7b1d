//! The tokio driver of a Triarch node.
//!
//! The protocol lives in `triarch-node` (sans-IO); this crate carries it out on real sockets and
//! disks: [`core`] owns the state machine and group-commits its writes, [`peer`] carries messages
//! between nodes, [`resp`] and [`http`] serve clients, [`metrics`] exports Prometheus metrics, and
//! [`config`] reads the node's TOML file.

pub mod config;
pub mod core;
pub mod http;
pub mod info;
pub mod metrics;
pub mod peer;
pub mod resp;
pub mod server;
pub mod storage;

pub use config::ServerConfig;
pub use server::{Running, StartError, start};
