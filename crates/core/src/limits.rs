//! Limits on everything a client can send (TigerBeetle's rule: every input is bounded).

/// Largest key accepted, in bytes: just under 64 KiB, because the storage engine caps keys at
/// 65,535 bytes and stores a keyspace tag in front of each.
pub const KEY_BYTES_MAX: usize = 65_000;
/// Default largest value accepted, in bytes (configurable per node up to [`VALUE_BYTES_LIMIT`]).
pub const VALUE_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;
/// Hard ceiling for the configurable value limit.
pub const VALUE_BYTES_LIMIT: usize = 512 * 1024 * 1024;
/// Longest keyspace name.
pub const KEYSPACE_NAME_BYTES_MAX: usize = 64;
/// Most keyspaces a cluster holds.
pub const KEYSPACES_MAX: usize = 1024;
/// Most nodes a cluster holds.
pub const NODES_MAX: usize = 256;
