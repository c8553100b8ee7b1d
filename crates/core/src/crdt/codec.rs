//! The compact versioned encoding of every CRDT and causal type: one format-version byte, then
//! postcard.
//!
//! The version byte lets a node refuse data written by a newer release instead of misreading
//! it; postcard is compact (varint integers, no field names) and is the project's wire format
//! already. Decoding never panics: truncated, garbled and hostile input all come back as a
//! [`DecodeError`], and every type checks its invariants while it is decoded ([`InvalidState`])
//! so that a decoded value is as trustworthy as a locally built one.

use crate::causal::{ActorId, CausalContext, Dot, DvvSet, VersionVector};
use crate::crdt::{
    AwSet, AwSetDelta, GCounter, GCounterDelta, LwwMap, LwwMapDelta, LwwRegister, MvRegister,
    PnCounter, PnCounterDelta,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The format version this release writes and reads. Bump it when any encoded shape changes.
pub const FORMAT_VERSION: u8 = 1;

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty input: no format version byte")]
    Empty,
    #[error("unknown format version {found} (this release reads version {supported})")]
    UnknownVersion { found: u8, supported: u8 },
    /// The body is not an encoding of the type, or the value breaks one of its invariants
    /// (postcard reports those as a custom error; see [`InvalidState`] for what is checked).
    #[error("malformed body")]
    Malformed(#[source] postcard::Error),
    #[error("{count} bytes left over after the value")]
    TrailingBytes { count: usize },
}

/// A decoded value that breaks an invariant of its type. Raised while deserializing (with any
/// serde format), so no invalid state is ever constructed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidState {
    #[error("dot of actor {actor} has counter 0; counters start at 1")]
    ZeroDot { actor: ActorId },
    #[error("counter of actor {actor} is stored as 0; absent actors are not stored")]
    ZeroCounter { actor: ActorId },
    #[error("causal context keeps dot {dot} outside its vector although no gap precedes it")]
    UncompactedDot { dot: Dot },
    #[error("DVVSet entry of actor {actor} holds {values} values for {counter} events")]
    TooManyValues {
        actor: ActorId,
        counter: u64,
        values: usize,
    },
    #[error("a set element has no dots")]
    ElementWithoutDots,
    #[error("dot {dot} of a set element is not in the set's causal context")]
    DotOutsideContext { dot: Dot },
    #[error("dot {dot} tags two set elements")]
    SharedDot { dot: Dot },
}

/// Types with the versioned encoding. Implemented for every CRDT, delta and causal type here.
pub trait Versioned: Serialize + DeserializeOwned {
    /// `[FORMAT_VERSION]` followed by the postcard encoding.
    ///
    /// # Panics
    /// Only if `Self`'s `Serialize` is one postcard cannot write (a sequence of unknown length);
    /// no type here has one, and value types must not either.
    fn encode(&self) -> Vec<u8> {
        postcard::to_extend(self, vec![FORMAT_VERSION])
            .expect("postcard writes every type here into a Vec")
    }

    /// Decodes what [`Versioned::encode`] wrote, checking the version, the shape, the type's
    /// invariants, and that nothing follows the value.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnknownVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let (value, rest) = postcard::take_from_bytes(body).map_err(DecodeError::Malformed)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes { count: rest.len() });
        }
        Ok(value)
    }
}

impl Versioned for VersionVector {}
impl Versioned for CausalContext {}
impl<V: Serialize + DeserializeOwned> Versioned for DvvSet<V> {}
impl<V: Serialize + DeserializeOwned> Versioned for LwwRegister<V> {}
impl<V: Serialize + DeserializeOwned> Versioned for MvRegister<V> {}
impl Versioned for GCounter {}
impl Versioned for GCounterDelta {}
impl Versioned for PnCounter {}
impl Versioned for PnCounterDelta {}
impl<E: Ord + Serialize + DeserializeOwned> Versioned for AwSet<E> {}
impl<E: Ord + Serialize + DeserializeOwned> Versioned for AwSetDelta<E> {}
impl<K: Ord + Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> Versioned
    for LwwMap<K, V>
{
}
impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> Versioned
    for LwwMapDelta<K, V>
{
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal::version_vector::tests::arb_version_vector;
    use crate::causal::{ActorId, dvvset};
    use crate::crdt::lww::tests::{arb_register, ts};
    use crate::crdt::{Crdt, DeltaCrdt, awset, counter, lww_map};
    use bytes::Bytes;
    use proptest::prelude::*;
    use std::fmt::Debug;

    fn round_trips<T: Versioned + PartialEq + Debug>(value: &T) -> Result<(), TestCaseError> {
        let bytes = value.encode();
        prop_assert_eq!(bytes[0], FORMAT_VERSION);
        let decoded = T::decode(&bytes);
        prop_assert!(decoded.is_ok(), "{:?}", decoded);
        prop_assert_eq!(&decoded.expect("checked"), value);
        Ok(())
    }

    /// Decodes `bytes` as `T`; a value that decodes must be a state the merge laws hold on.
    fn decode_as<T: Versioned + Crdt + Clone + PartialEq + Debug>(bytes: &[u8]) {
        if let Ok(value) = T::decode(bytes) {
            let mut merged = value.clone();
            merged.merge(&value);
            assert_eq!(
                merged, value,
                "a decoded state is not idempotent under merge"
            );
        }
    }

    /// Feeds `bytes` to every decoder. None may panic.
    fn decode_with_every_decoder(bytes: &[u8]) {
        decode_as::<VersionVector>(bytes);
        decode_as::<CausalContext>(bytes);
        decode_as::<DvvSet<Bytes>>(bytes);
        decode_as::<DvvSet<u32>>(bytes);
        decode_as::<LwwRegister<Bytes>>(bytes);
        decode_as::<LwwRegister<Option<Bytes>>>(bytes);
        decode_as::<MvRegister<Bytes>>(bytes);
        decode_as::<GCounter>(bytes);
        decode_as::<PnCounter>(bytes);
        decode_as::<AwSet<Bytes>>(bytes);
        decode_as::<AwSet<u8>>(bytes);
        decode_as::<LwwMap<Bytes, Bytes>>(bytes);
        decode_as::<LwwMap<u8, u8>>(bytes);
        // Deltas are not CRDTs themselves; decoding is enough.
        let _ = GCounterDelta::decode(bytes);
        let _ = PnCounterDelta::decode(bytes);
        let _ = AwSetDelta::<Bytes>::decode(bytes);
        let _ = LwwMapDelta::<Bytes, Bytes>::decode(bytes);
    }

    #[test]
    fn the_format_is_pinned() {
        // Changing these bytes changes the format: bump FORMAT_VERSION with it.
        let vector: VersionVector = [(ActorId(1), 5), (ActorId(2), 300)].into_iter().collect();
        assert_eq!(vector.encode(), vec![1, 2, 1, 5, 2, 0xac, 0x02]);
        let mut counter = GCounter::new();
        let _ = counter.increment_by(ActorId(7), 3).expect("small");
        assert_eq!(counter.encode(), vec![1, 1, 7, 3]);
    }

    #[test]
    fn an_unknown_format_version_is_an_error() {
        let mut bytes = GCounter::new().encode();
        bytes[0] = FORMAT_VERSION + 1;
        assert!(matches!(
            GCounter::decode(&bytes),
            Err(DecodeError::UnknownVersion { found, supported: FORMAT_VERSION }) if found == FORMAT_VERSION + 1
        ));
        assert!(matches!(GCounter::decode(&[]), Err(DecodeError::Empty)));
    }

    #[test]
    fn truncated_and_padded_input_is_an_error() {
        let mut set = AwSet::new();
        let _ = set.add(ActorId(1), Bytes::from_static(b"book"));
        let bytes = set.encode();
        for cut in 1..bytes.len() {
            assert!(
                AwSet::<Bytes>::decode(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(matches!(
            AwSet::<Bytes>::decode(&padded),
            Err(DecodeError::TrailingBytes { count: 1 })
        ));
    }

    #[test]
    fn a_shopping_cart_and_a_hash_round_trip_with_byte_values() {
        let mut cart = AwSet::new();
        let _ = cart.add(ActorId(1), Bytes::from_static(b"book"));
        let _ = cart.add(ActorId(2), Bytes::from_static(b"pen"));
        let _ = cart.remove(&Bytes::from_static(b"book"));
        assert_eq!(AwSet::<Bytes>::decode(&cart.encode()).ok(), Some(cart));

        let mut hash = LwwMap::new();
        let (delta, _) = hash.set(Bytes::from_static(b"f"), ts(1, 1), Bytes::from_static(b"v"));
        let _ = hash.delete(Bytes::from_static(b"g"), ts(2, 1));
        assert_eq!(
            LwwMap::<Bytes, Bytes>::decode(&hash.encode()).ok(),
            Some(hash)
        );
        assert_eq!(
            LwwMapDelta::<Bytes, Bytes>::decode(&delta.encode()).ok(),
            Some(delta)
        );
    }

    proptest! {
        #[test]
        fn every_type_round_trips(
            vector in arb_version_vector(),
            register in arb_register(),
            dvv_steps in dvvset::tests::arb_steps(3),
            counter_steps in counter::tests::arb_steps(),
            set_steps in awset::tests::arb_steps(),
            map_steps in lww_map::tests::arb_steps(),
        ) {
            round_trips(&vector)?;
            round_trips(&CausalContext::from(vector))?;
            round_trips(&register)?;
            for replica in dvvset::tests::run_against_model(3, &dvv_steps, DvvSet::sync)? {
                round_trips(&MvRegister::from(replica.clone()))?;
                round_trips(&replica)?;
            }
            let (counters, counter_deltas, _) = counter::tests::run(&counter_steps);
            for delta in &counter_deltas {
                round_trips(delta)?;
            }
            for replica in &counters {
                round_trips(replica)?;
            }
            let set_run = awset::tests::run(&set_steps, AwSet::apply);
            for delta in &set_run.deltas {
                round_trips(delta)?;
            }
            // Replicas mid-run, with dots waiting in their contexts' clouds.
            for replica in &set_run.replicas {
                round_trips(replica)?;
            }
            let (maps, map_deltas) = lww_map::tests::run(&map_steps);
            for delta in &map_deltas {
                round_trips(delta)?;
            }
            for replica in &maps {
                round_trips(replica)?;
            }
        }

        #[test]
        fn random_bytes_never_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            decode_with_every_decoder(&bytes);
            // Most random first bytes fail the version check; also try the body behind a valid one.
            let mut versioned = vec![FORMAT_VERSION];
            versioned.extend_from_slice(&bytes);
            decode_with_every_decoder(&versioned);
        }

        #[test]
        fn corrupted_encodings_never_panic_a_decoder(
            set_steps in awset::tests::arb_steps(),
            dvv_steps in dvvset::tests::arb_steps(2),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            let set_run = awset::tests::run(&set_steps, AwSet::apply);
            let dvv = dvvset::tests::run_against_model(2, &dvv_steps, DvvSet::sync)?;
            for mut bytes in [set_run.replicas[0].encode(), dvv[0].encode()] {
                for &(at, value) in &flips {
                    let len = bytes.len();
                    bytes[at % len] = value;
                }
                bytes[0] = FORMAT_VERSION;
                decode_with_every_decoder(&bytes);
            }
        }
    }
}
