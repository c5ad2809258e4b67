//! Seeded permutations of `0..n` that need no memory: the shuffle of every
//! epoch and the validation split, for datasets of any size.
//!
//! A table of n indices would make memory grow with the dataset (800 MB
//! for 10^8 rows); instead, position p maps to row `permute(p)`, computed
//! when needed by a keyed Feistel network (Luby–Rackoff: a bijection on
//! 0..2^k for any round function) restricted to 0..n by cycle walking:
//! apply it again until the value falls below n. Since 2^k < 4n, a walk
//! takes under four rounds on average. The inverse runs the rounds
//! backwards with the same walk.
//!
//! The algorithm is fixed and written out here so any tool can reproduce
//! a run's batches (the numpy reference, scripts/reference_minibatch.py,
//! does):
//!
//! ```text
//! mix(z)  = SplitMix64's finaliser of z + 0x9E3779B97F4A7C15 (wrapping)
//! k       = max(2, bits(n - 1)) rounded up to even; h = k / 2
//! round r = mix(key ^ r) ;  F(r, v) = mix(round r ^ v) & (2^h - 1)
//! encrypt(i): L = i >> h, R = i & (2^h - 1)
//!             for r in 0..6: L, R = R, L ^ F(r, R)
//!             return L << h | R
//! permute(p): i = encrypt(p); while i >= n: i = encrypt(i)
//! ```
//!
//! Keys: the split's is `mix(seed ^ SPLIT)`, epoch e's is
//! `mix(mix(seed ^ EPOCH) ^ e)` (constants below). How the permutations
//! become batches is in [`super::batches`].

/// Rounds of the Feistel network (3 make a pseudo-random permutation;
/// more cost nothing that matters here).
const ROUNDS: u64 = 6;

/// Stream constant of the validation split's key.
pub const SPLIT: u64 = 0x5350_4c49_5400_0000; // "SPLIT"
/// Stream constant of the epochs' keys.
pub const EPOCH: u64 = 0x4550_4f43_4800_0000; // "EPOCH"

/// SplitMix64's output function of `z + golden gamma`: a fast 64-bit mix
/// whose every output bit depends on every input bit.
pub fn mix(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seeded bijection of `0..n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permutation {
    n: u64,
    half_bits: u32,
    keys: [u64; ROUNDS as usize],
}

impl Permutation {
    /// The permutation of `0..n` keyed by `key`.
    pub fn new(n: u64, key: u64) -> Self {
        let bits = (64 - n.saturating_sub(1).leading_zeros()).max(2);
        let bits = bits + bits % 2;
        let mut keys = [0; ROUNDS as usize];
        for (r, k) in keys.iter_mut().enumerate() {
            *k = mix(key ^ r as u64);
        }
        Permutation {
            n,
            half_bits: bits / 2,
            keys,
        }
    }

    /// The permutation of epoch `epoch`'s shuffle of `n` rows under `seed`.
    pub fn epoch(n: u64, seed: u64, epoch: u64) -> Self {
        Self::new(n, mix(mix(seed ^ EPOCH) ^ epoch))
    }

    /// The permutation that splits `n` rows into validation and training
    /// ones under `seed` (positions below the validation count are
    /// validation rows).
    pub fn split(n: u64, seed: u64) -> Self {
        Self::new(n, mix(seed ^ SPLIT))
    }

    /// How many values it permutes.
    pub fn len(&self) -> u64 {
        self.n
    }

    /// Whether it permutes nothing.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn round(&self, r: usize, v: u64) -> u64 {
        mix(self.keys[r] ^ v) & ((1 << self.half_bits) - 1)
    }

    fn encrypt(&self, i: u64) -> u64 {
        let mask = (1 << self.half_bits) - 1;
        let (mut l, mut r) = (i >> self.half_bits, i & mask);
        for k in 0..ROUNDS as usize {
            (l, r) = (r, l ^ self.round(k, r));
        }
        (l << self.half_bits) | r
    }

    fn decrypt(&self, i: u64) -> u64 {
        let mask = (1 << self.half_bits) - 1;
        let (mut l, mut r) = (i >> self.half_bits, i & mask);
        for k in (0..ROUNDS as usize).rev() {
            (l, r) = (r ^ self.round(k, l), l);
        }
        (l << self.half_bits) | r
    }

    /// The value at position `p` (< n).
    pub fn apply(&self, p: u64) -> u64 {
        debug_assert!(p < self.n);
        let mut i = self.encrypt(p);
        while i >= self.n {
            i = self.encrypt(i);
        }
        i
    }

    /// The position of value `v` (< n): `invert(apply(p)) == p`.
    pub fn invert(&self, v: u64) -> u64 {
        debug_assert!(v < self.n);
        let mut i = self.decrypt(v);
        while i >= self.n {
            i = self.decrypt(i);
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_size_is_a_bijection_and_inverts() {
        for n in [1u64, 2, 3, 4, 5, 7, 16, 17, 100, 1000, 4097] {
            let p = Permutation::new(n, 42);
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let v = p.apply(i);
                assert!(v < n && !seen[v as usize], "n={n} i={i} v={v}");
                seen[v as usize] = true;
                assert_eq!(p.invert(v), i);
            }
        }
    }

    #[test]
    fn keys_give_different_orders_and_the_same_key_the_same() {
        let n = 1000;
        let a: Vec<u64> = (0..n)
            .map(|i| Permutation::epoch(n, 0, 0).apply(i))
            .collect();
        let b: Vec<u64> = (0..n)
            .map(|i| Permutation::epoch(n, 0, 1).apply(i))
            .collect();
        let a2: Vec<u64> = (0..n)
            .map(|i| Permutation::epoch(n, 0, 0).apply(i))
            .collect();
        assert_eq!(a, a2);
        assert_ne!(a, b);
        // Shuffled, not near the identity: few fixed points, and the first
        // tenth of the positions spread over the whole range.
        let fixed = a
            .iter()
            .enumerate()
            .filter(|(i, &v)| *i as u64 == v)
            .count();
        assert!(fixed < 10, "{fixed} fixed points");
        let first: Vec<u64> = a[..100].to_vec();
        assert!(first.iter().any(|&v| v > 900) && first.iter().any(|&v| v < 100));
    }

    #[test]
    fn large_sizes_need_no_table() {
        let n = 10_000_000_000u64;
        let p = Permutation::epoch(n, 7, 3);
        for i in [0, 1, n / 2, n - 1] {
            assert_eq!(p.invert(p.apply(i)), i);
            assert!(p.apply(i) < n);
        }
    }
}
