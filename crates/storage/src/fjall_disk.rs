//! Placeholder: the fjall-backed storage is being written.
pub struct FjallStorage;
pub struct FjallSyncer;
