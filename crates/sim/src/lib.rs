//! The deterministic simulator: virtual time, seeded network and faults, workloads, histories and checkers.
