//! Seeded mini-batches: which examples each training step sees, fixed by a seed on every
//! machine and every version of the `rand` crate.

use crate::error::{Error, Result};

/// SplitMix64 (Steele, Lea & Flood 2014): a 64-bit generator whose output sequence is
/// fixed by this code, so a seed shuffles the same way whatever version of `rand` the
/// build has (rand's `StdRng` does not promise that across releases).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound >= 1`), by multiply-shift (bias below 2^-32 for
    /// any data-set size).
    pub fn below(&mut self, bound: usize) -> usize {
        ((self.next_u64() as u128 * bound as u128) >> 64) as usize
    }
}

/// Seeded mini-batches over `n` examples: each epoch is a fresh permutation of `0..n`
/// (Fisher–Yates with [`SplitMix64`] seeded from `(seed, epoch)`) cut into batches of
/// `batch_size`; the last batch of an epoch holds the remainder (it is smaller when
/// `batch_size` does not divide `n`), and a `batch_size` above `n` gives one batch of all
/// `n` per epoch. Same `(n, batch_size, seed)`, same batches, on every machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batches {
    n: usize,
    batch_size: usize,
    seed: u64,
}

impl Batches {
    /// Errors: [`Error::InvalidArgument`] when `n` or `batch_size` is 0.
    pub fn new(n: usize, batch_size: usize, seed: u64) -> Result<Self> {
        if n == 0 {
            return Err(Error::invalid(
                "the number of examples is 0; expected at least 1 to draw batches from",
            ));
        }
        if batch_size == 0 {
            return Err(Error::invalid("batch_size is 0; expected at least 1"));
        }
        Ok(Self {
            n,
            batch_size,
            seed,
        })
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Batches in one epoch: `ceil(n / batch_size)`.
    pub fn per_epoch(&self) -> usize {
        self.n.div_ceil(self.batch_size)
    }

    /// The example order of `epoch`: a permutation of `0..n`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut rng = SplitMix64::new(
            SplitMix64::new(self.seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64(),
        );
        let mut idx: Vec<usize> = (0..self.n).collect();
        for i in (1..self.n).rev() {
            idx.swap(i, rng.below(i + 1));
        }
        idx
    }

    /// The batches of `epoch`, in order.
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        self.order(epoch)
            .chunks(self.batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// The batch of global step `step` (epoch `step / per_epoch`): random access, so a
    /// resumed run draws what an uninterrupted one would have.
    pub fn batch(&self, step: usize) -> Vec<usize> {
        let per = self.per_epoch();
        let order = self.order((step / per) as u64);
        let start = (step % per) * self.batch_size;
        order[start..(start + self.batch_size).min(self.n)].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_seeded_permutations() {
        let b = Batches::new(10, 3, 42).unwrap();
        assert_eq!(b.per_epoch(), 4);
        let e0 = b.epoch(0);
        assert_eq!(e0.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3, 1]);
        let mut all: Vec<usize> = e0.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(e0, Batches::new(10, 3, 42).unwrap().epoch(0));
        assert_ne!(e0, b.epoch(1));
        assert_ne!(e0, Batches::new(10, 3, 43).unwrap().epoch(0));
        assert_ne!(b.order(0), (0..10).collect::<Vec<_>>());
        for step in 0..8 {
            assert_eq!(b.batch(step), b.epoch(step as u64 / 4)[step % 4]);
        }
        // The sequence is pinned by SplitMix64, not by the rand crate.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
        let big = Batches::new(3, 8, 0).unwrap();
        assert_eq!(big.epoch(0).len(), 1);
        assert_eq!(big.batch(5).len(), 3);
        assert!(Batches::new(0, 1, 0).is_err());
        let e = Batches::new(1, 0, 0).unwrap_err().to_string();
        assert_eq!(e, "batch_size is 0; expected at least 1");
    }
}
