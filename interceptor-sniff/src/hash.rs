//! One hasher for the tables keyed by what comes off the wire (pending exchanges, request
//! ids, the live view's exchange references): several times cheaper than std's SipHash on
//! short keys, and seeded at random per table so that a sender cannot choose colliding keys.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// The hashes of the pending tables and of the fingerprints: foldhash's folded multiply
/// under a random seed, several times cheaper than SipHash on these short keys. Keys come
/// from the wire, so an attacker chooses them, but not the seed.
#[derive(Clone, Copy)]
pub struct Seed {
    /// Where each hash starts.
    start: u64,
    /// Mixed into every multiplier.
    key: u64,
}

impl Seed {
    pub fn random() -> Seed {
        let s = RandomState::new();
        Seed {
            start: s.hash_one(0u8),
            key: s.hash_one(1u8),
        }
    }
}

/// A fresh random seed: tables made with `default()` are seeded too.
impl Default for Seed {
    fn default() -> Seed {
        Seed::random()
    }
}

impl BuildHasher for Seed {
    type Hasher = FoldHasher;

    fn build_hasher(&self) -> FoldHasher {
        FoldHasher {
            acc: self.start,
            key: self.key,
        }
    }
}

/// The hasher of a [`Seed`].
pub struct FoldHasher {
    acc: u64,
    key: u64,
}

/// The 128-bit product's halves xored: each bit of either factor reaches most of the result.
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// `b`'s first eight bytes as one word.
fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

/// `b`'s first four bytes as one word.
fn half_word(b: &[u8]) -> u64 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[..4]);
    u64::from(u32::from_le_bytes(w))
}

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.acc
    }

    fn write(&mut self, bytes: &[u8]) {
        // Rotated by the length: the reads of the tail overlap, and bytes split differently
        // between two writes must not hash alike.
        let mut acc = self.acc.rotate_left(bytes.len() as u32);
        let mut chunks = bytes.chunks_exact(16);
        for c in &mut chunks {
            acc = fold_mul(acc ^ word(c), word(&c[8..]) ^ self.key);
        }
        let rest = chunks.remainder();
        let [a, b] = match rest.len() {
            4.. => ends(rest),
            0 => [0, 0],
            n => {
                let [x, y, z] = [rest[0], rest[n / 2], rest[n - 1]].map(u64::from);
                [x | y << 8 | z << 16, 0]
            }
        };
        self.acc = fold_mul(acc ^ a, b ^ self.key);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(n.into());
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(n.into());
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(n.into());
    }
    fn write_u64(&mut self, n: u64) {
        self.acc = fold_mul(self.acc ^ n, self.key);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

impl Seed {
    /// A seed under which every key hashes alike, for tests that tables hold up under
    /// collisions.
    #[cfg(test)]
    pub(crate) fn colliding() -> Seed {
        Seed { start: 1, key: 0 }
    }
}

/// The first and the last eight bytes of `s`, or four when it is shorter (at least four).
pub(crate) fn ends(s: &[u8]) -> [u64; 2] {
    let n = s.len();
    if n >= 8 {
        [word(s), word(&s[n - 8..])]
    } else {
        [half_word(s), half_word(&s[n - 4..])]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_hasher_tells_inputs_apart() {
        let seed = Seed::random();
        let s = "0123456789abcdefghijklmnopqrstuvwxyz-_:/";
        // Every length, both read paths (16-byte steps, overlapping tails).
        let mut seen = std::collections::HashSet::new();
        for n in 0..=s.len() {
            assert!(seen.insert(seed.hash_one(&s.as_bytes()[..n])), "{n}");
            assert_eq!(
                seed.hash_one(&s.as_bytes()[..n]),
                seed.hash_one(s.as_bytes()[..n].to_vec())
            );
        }
        // Bytes whose overlapping reads are the same, and bytes split differently.
        let write = |parts: &[&[u8]]| {
            let mut h = seed.build_hasher();
            parts.iter().for_each(|p| h.write(p));
            h.finish()
        };
        assert_ne!(write(&[b"ab"]), write(&[b"abb"]));
        assert_ne!(write(&[b"abcdabcd"]), write(&[b"abcdabcdabcd"]));
        assert_ne!(write(&[b"ab", b"c"]), write(&[b"a", b"bc"]));
        assert_ne!(write(&[b""]), write(&[]));
        let ints: std::collections::HashSet<u64> = (0..1000u64).map(|i| seed.hash_one(i)).collect();
        assert_eq!(ints.len(), 1000);
        // Another seed, other hashes.
        assert_ne!(Seed::random().hash_one(s), seed.hash_one(s));
    }
}
