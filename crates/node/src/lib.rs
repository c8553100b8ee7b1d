//! One Triarch node as a sans-IO state machine: the keyspace catalog, routing of requests to each keyspace's replication model.
