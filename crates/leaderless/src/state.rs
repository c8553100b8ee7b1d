//! The merge-policy states of `triarch_core::merge`, as the leaderless engine uses them (the
//! actor that issues dots is the coordinating replica), and a cache of decoded states.

pub use triarch_core::merge::*;

use bytes::Bytes;
use std::collections::BTreeMap;

/// Decoded states of recently used keys, so that a hot key (a cart being filled) is not decoded
/// from its bytes on every message. An entry is used only if the stored bytes are exactly the
/// bytes it was decoded from (or encoded to), so it can never answer for a state the storage no
/// longer holds; it lives in memory only and starts empty after a restart.
#[derive(Debug, Default)]
pub(crate) struct StateCache {
    entries: BTreeMap<(String, Bytes), (Vec<u8>, State)>,
}

/// Keys whose decoded state the cache keeps; beyond it, the smallest key is dropped.
pub(crate) const STATE_CACHE_ENTRIES_MAX: usize = 1024;

impl StateCache {
    /// The decoding of `bytes`, the stored bytes of `key`, if cached.
    pub fn get(&self, keyspace: &str, key: &[u8], bytes: &[u8]) -> Option<State> {
        let entry = self
            .entries
            .get(&(keyspace.to_string(), Bytes::copy_from_slice(key)))?;
        (entry.0 == bytes).then(|| entry.1.clone())
    }

    pub fn insert(&mut self, keyspace: &str, key: &[u8], bytes: Vec<u8>, state: State) {
        let name = (keyspace.to_string(), Bytes::copy_from_slice(key));
        if !self.entries.contains_key(&name) && self.entries.len() >= STATE_CACHE_ENTRIES_MAX {
            self.entries.pop_first();
        }
        self.entries.insert(name, (bytes, state));
        assert!(self.entries.len() <= STATE_CACHE_ENTRIES_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triarch_core::causal::ActorId;
    use triarch_core::{Hlc, NodeId};

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn at(operation: Operation, actor: ActorId, local: Option<State>) -> State {
        let mut hlc = Hlc::new(NodeId(actor.0), 60_000);
        let p = prepare(&operation, actor, local.as_ref(), None, &mut hlc, 1_000).unwrap();
        let mut state = local;
        apply_update(&mut state, &p.update.unwrap()).unwrap();
        state.unwrap()
    }

    const A: ActorId = ActorId(1);

    #[test]
    fn the_cache_answers_only_for_the_exact_bytes_and_stays_bounded() {
        let mut cache = StateCache::default();
        let state = at(Operation::SetAdd(vec![b("x")]), A, None);
        let bytes = state.encode();
        cache.insert("cart", b"k", bytes.clone(), state.clone());
        assert_eq!(cache.get("cart", b"k", &bytes), Some(state.clone()));
        assert_eq!(cache.get("cart", b"k", &bytes[..bytes.len() - 1]), None);
        assert_eq!(cache.get("other", b"k", &bytes), None);
        for i in 0..STATE_CACHE_ENTRIES_MAX + 10 {
            cache.insert(
                "cart",
                format!("k{i}").as_bytes(),
                bytes.clone(),
                state.clone(),
            );
        }
        assert_eq!(cache.entries.len(), STATE_CACHE_ENTRIES_MAX);
    }
}
