//! The tokio driver of a node: peer transport, RESP and HTTP APIs, metrics, configuration, durable storage.
