//! The `triarch` command line: running nodes, local clusters, the demo and the simulator.

pub mod cluster;
pub mod demo;
