//! Leaderless (Dynamo-style) replication: ring, preference lists, quorum coordinator, replica, read repair. Sans-IO.
