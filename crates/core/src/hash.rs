//! A stable 64-bit hash for placement.
//!
//! Ring positions are persisted implicitly (they decide which node stores which key), so the
//! hash must never change between releases, platforms or Rust versions. `std`'s `DefaultHasher`
//! makes no such promise, so this is FNV-1a followed by the SplitMix64 finaliser, which fixes
//! FNV's weak avalanche on short keys.

/// Hashes `bytes` to a 64-bit ring position. Stable forever: changing it moves every key.
pub fn stable_hash64(bytes: &[u8]) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    mix64(h)
}

/// The SplitMix64 finaliser: a bijection on u64 with good avalanche.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_values_are_pinned() {
        // If this fails, every key moves to other nodes: never change the hash.
        assert_eq!(stable_hash64(b""), mix64(0xcbf2_9ce4_8422_2325));
        assert_eq!(
            stable_hash64(b"balance:alice"),
            stable_hash64(b"balance:alice")
        );
        assert_ne!(stable_hash64(b"a"), stable_hash64(b"b"));
        assert_eq!(stable_hash64(b"triarch"), 2_637_163_428_010_562_234);
    }
}
