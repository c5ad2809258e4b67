//! The exact distribution of a bootstrap median, as a table to draw from.
//!
//! The gate's bootstrap resamples a process's n step times with
//! replacement and takes the median, thousands of times per point. Drawn
//! literally that is n random indices and a selection per median: at 200
//! steps, 16 processes and 2,000 resamples, 6.4 million draws a point. But
//! the median of a resample is always one of the original order
//! statistics (or, for even n, the mean of two), and *which* ones depends
//! on n alone, not on the values. So the distribution of the pair of
//! ranks is computed once per n, and each resampled median becomes one
//! draw from it (Walker's alias method: one 64-bit random number, O(1)).
//!
//! ## The distribution
//!
//! Sort the n values x₁ ≤ … ≤ xₙ (ranks 1-based here). A resample puts C_k
//! copies of x_k, (C₁, …, Cₙ) multinomial(n; 1/n, …, 1/n), and S_i = C₁ +
//! … + C_i is binomial(n, i/n). The resample's a-th smallest value is x_I
//! with I = min{i : S_i ≥ a}, so
//!
//! ```text
//! P(I ≤ i) = P(S_i ≥ a) = P(Binomial(n, i/n) ≥ a).                   (1)
//! ```
//!
//! *Odd n*: the median is the m-th value, m = (n+1)/2: P(I = i) from (1)
//! with a = m, and the median is x_I.
//!
//! *Even n*: the median is (x_I + x_J)/2 for the a-th and (a+1)-th values,
//! a = n/2. J = I unless S_I = a exactly; then the remaining e = n − a
//! draws fall uniformly on ranks I+1..n and J is the first of them. With
//! the a draws at or below i uniform on 1..i,
//!
//! ```text
//! P(I = i, J > i)  = P(S_i = a) · (1 − ((i−1)/i)^a)
//!                  = C(n, a) · (i/n)^a (1 − ((i−1)/i)^a) · (1 − i/n)^e,
//! P(I = i, J = j)  = C(n, a) · (i/n)^a (1 − ((i−1)/i)^a)
//!                            · ((n−j+1)/n)^e (1 − ((n−j)/(n−j+1))^e),  j > i,
//! P(I = i, J = i)  = P(I = i) − P(I = i, J > i).
//! ```
//!
//! (The first factor pair is the chance that the a-th value lands in rank
//! i's bin, the second that the first of the other e lands in rank j's.)
//! Masses below [`NEGLIGIBLE`] are left out: at 10¹⁰ draws, fewer than one
//! in 10⁴ comparisons of that size would ever draw one.
//!
//! `the_table_is_the_exact_distribution` checks every table up to n = 7
//! against all nⁿ resamples enumerated.

use rand::Rng;

/// A mass this small is left out of a table (see the module's doc).
pub const NEGLIGIBLE: f64 = 1e-18;

/// The distribution of a resampled median's ranks for one sample count,
/// ready to draw from.
pub struct MedianTable {
    /// The sample count n.
    n: usize,
    /// The lowest and highest 0-based rank any atom uses: a process needs
    /// only its values of ranks `lo..=hi` sorted.
    lo: usize,
    hi: usize,
    /// The atoms: 0-based ranks (i, j) relative to `lo`, the median being
    /// (x_i + x_j)/2 (i = j for odd n and for ties of the two middle
    /// values of a resample).
    atoms: Vec<(u16, u16)>,
    /// Walker's alias method: atom k is taken when the low 32 bits of the
    /// draw are below `cut[k]` (in units of 2⁻³²), else `alias[k]`.
    cut: Vec<u64>,
    alias: Vec<u32>,
}

/// ln k! for k = 0..=n.
fn ln_factorials(n: usize) -> Vec<f64> {
    let mut lf = Vec::with_capacity(n + 1);
    let mut acc = 0.0;
    lf.push(0.0);
    for k in 1..=n {
        acc += (k as f64).ln();
        lf.push(acc);
    }
    lf
}

/// P(Binomial(n, p) ≥ m), to an absolute error of about 10⁻¹⁶. The pmf is
/// summed from m away from the mode (where its terms fall monotonically)
/// until they no longer count, each term from the last by the ratio of
/// consecutive binomial terms: one `exp` per call.
fn binomial_at_least(n: usize, p: f64, m: usize, lf: &[f64]) -> f64 {
    if m == 0 || p >= 1.0 {
        return 1.0;
    }
    if m > n || p <= 0.0 {
        return 0.0;
    }
    let (lp, lq) = (p.ln(), (-p).ln_1p());
    let ln_pmf = |k: usize| lf[n] - lf[k] - lf[n - k] + k as f64 * lp + (n - k) as f64 * lq;
    let odds = p / (1.0 - p);
    let mut sum = 0.0;
    if m as f64 > n as f64 * p {
        // Upper tail: t(k+1) = t(k) · (n−k)/(k+1) · p/(1−p), falling for k ≥ m.
        let (mut k, mut t) = (m, ln_pmf(m).exp());
        loop {
            sum += t;
            if k == n || t <= sum * 1e-18 {
                return sum;
            }
            t *= (n - k) as f64 / (k + 1) as f64 * odds;
            k += 1;
        }
    } else {
        // One minus the lower tail below m, summed downward from m − 1.
        let (mut k, mut t) = (m - 1, ln_pmf(m - 1).exp());
        loop {
            sum += t;
            if k == 0 || t <= sum * 1e-18 {
                return 1.0 - sum;
            }
            t *= k as f64 / (n - k + 1) as f64 / odds;
            k -= 1;
        }
    }
}

impl MedianTable {
    /// The table for samples of `n` values (1 ≤ n ≤ 65,535).
    pub fn new(n: usize) -> MedianTable {
        assert!(
            (1..=u16::MAX as usize).contains(&n),
            "median table for {n} values"
        );
        let lf = ln_factorials(n);
        let nf = n as f64;
        // a: the rank of the (lower) middle value of a resample.
        let a = if n % 2 == 1 { n.div_ceil(2) } else { n / 2 };
        let cdf = |i: usize| binomial_at_least(n, i as f64 / nf, a, &lf);
        // (i, j, mass), 1-based ranks.
        let mut masses: Vec<(usize, usize, f64)> = Vec::new();
        let mut below = 0.0; // P(I ≤ i − 1)
        for i in 1..=n {
            let upto = if i == n { 1.0 } else { cdf(i) };
            let p_i = (upto - below).max(0.0);
            below = upto;
            if p_i <= NEGLIGIBLE {
                continue;
            }
            if n % 2 == 1 || i == n {
                masses.push((i, i, p_i));
                continue;
            }
            // Even n: split P(I = i) between J = i and each J = j > i.
            let e = (n - a) as f64;
            let ln_c = lf[n] - lf[a] - lf[n - a];
            // ln[(i/n)^a (1 − ((i−1)/i)^a)]
            let ln_a_i = a as f64 * (i as f64 / nf).ln()
                + (-(a as f64 * (-1.0 / i as f64).ln_1p()).exp_m1()).ln();
            let split = (ln_c + ln_a_i + e * (1.0 - i as f64 / nf).ln()).exp();
            masses.push((i, i, (p_i - split).max(0.0)));
            for j in i + 1..=n {
                // ln[((n−j+1)/n)^e (1 − ((n−j)/(n−j+1))^e)]
                let r = (n - j + 1) as f64;
                let ln_b_j = e * (r / nf).ln() + (-(e * (-1.0 / r).ln_1p()).exp_m1()).ln();
                let mass = (ln_c + ln_a_i + ln_b_j).exp();
                if mass <= NEGLIGIBLE {
                    break; // the masses fall with j
                }
                masses.push((i, j, mass));
            }
        }
        masses.retain(|&(_, _, m)| m > NEGLIGIBLE);
        let lo = masses
            .iter()
            .map(|m| m.0)
            .min()
            .expect("a median has a rank")
            - 1;
        let hi = masses
            .iter()
            .map(|m| m.1)
            .max()
            .expect("a median has a rank")
            - 1;
        let atoms = masses
            .iter()
            .map(|&(i, j, _)| ((i - 1 - lo) as u16, (j - 1 - lo) as u16))
            .collect();
        let (cut, alias) = alias_table(&masses.iter().map(|m| m.2).collect::<Vec<_>>());
        MedianTable {
            n,
            lo,
            hi,
            atoms,
            cut,
            alias,
        }
    }

    /// The sample count the table is for.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The 0-based ranks whose values a draw can use: `lo..=hi`.
    pub fn ranks(&self) -> (usize, usize) {
        (self.lo, self.hi)
    }

    /// The sorted values of ranks `lo..=hi` of `values` (n of them): what
    /// [`MedianTable::draw`] reads.
    pub fn window(&self, values: &[f64]) -> Vec<f64> {
        assert_eq!(values.len(), self.n);
        let mut v = values.to_vec();
        v.select_nth_unstable_by(self.lo, f64::total_cmp);
        let rest = &mut v[self.lo..];
        rest.select_nth_unstable_by(self.hi - self.lo, f64::total_cmp);
        let window = &mut rest[..=self.hi - self.lo];
        window.sort_unstable_by(f64::total_cmp);
        window.to_vec()
    }

    /// One resampled median of the values whose [`MedianTable::window`] is
    /// `window`.
    #[inline]
    pub fn draw<R: Rng + ?Sized>(&self, window: &[f64], rng: &mut R) -> f64 {
        let r = rng.next_u64();
        let k = (((r >> 32) * self.cut.len() as u64) >> 32) as usize;
        let atom = if (r & 0xffff_ffff) < self.cut[k] {
            k
        } else {
            self.alias[k] as usize
        };
        let (i, j) = self.atoms[atom];
        0.5 * (window[i as usize] + window[j as usize])
    }

    /// The atoms and their probabilities, 0-based ranks: for tests.
    #[cfg(test)]
    fn probabilities(&self) -> Vec<((usize, usize), f64)> {
        let k = self.cut.len();
        let mut p = vec![0.0; k];
        for (idx, (&c, &a)) in self.cut.iter().zip(&self.alias).enumerate() {
            let take = c as f64 / 4_294_967_296.0;
            p[idx] += take / k as f64;
            p[a as usize] += (1.0 - take) / k as f64;
        }
        self.atoms
            .iter()
            .zip(p)
            .map(|(&(i, j), p)| ((i as usize + self.lo, j as usize + self.lo), p))
            .collect()
    }
}

/// Walker's alias table (Vose's construction) for `weights` (positive, not
/// necessarily summing to 1): thresholds in units of 2⁻³² and aliases.
fn alias_table(weights: &[f64]) -> (Vec<u64>, Vec<u32>) {
    let k = weights.len();
    let total: f64 = weights.iter().sum();
    let mut scaled: Vec<f64> = weights.iter().map(|w| w * k as f64 / total).collect();
    let mut cut = vec![1u64 << 32; k];
    let mut alias: Vec<u32> = (0..k as u32).collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..k).partition(|&i| scaled[i] < 1.0);
    while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
        small.pop();
        cut[s] = (scaled[s] * 4_294_967_296.0).round() as u64;
        alias[s] = l as u32;
        scaled[l] -= 1.0 - scaled[s];
        if scaled[l] < 1.0 {
            large.pop();
            small.push(l);
        }
    }
    // What is left (rounding) is taken whole.
    (cut, alias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// The resampled median's (i, j) ranks for every one of the nⁿ
    /// resamples of n positions, counted.
    fn enumerate(n: usize) -> std::collections::BTreeMap<(usize, usize), f64> {
        let mut counts = std::collections::BTreeMap::new();
        let total = n.pow(n as u32);
        let mut draw = vec![0usize; n];
        for code in 0..total {
            let mut c = code;
            for d in draw.iter_mut() {
                *d = c % n;
                c /= n;
            }
            draw.sort_unstable();
            let key = if n % 2 == 1 {
                (draw[n / 2], draw[n / 2])
            } else {
                (draw[n / 2 - 1], draw[n / 2])
            };
            *counts.entry(key).or_insert(0.0) += 1.0 / total as f64;
        }
        counts
    }

    #[test]
    fn the_table_is_the_exact_distribution() {
        for n in 1..=7 {
            let exact = enumerate(n);
            let table = MedianTable::new(n).probabilities();
            assert_eq!(table.len(), exact.len(), "n = {n}: atoms");
            for ((i, j), p) in table {
                let want = exact[&(i, j)];
                assert!(
                    (p - want).abs() < 1e-9,
                    "n = {n}, ranks ({i}, {j}): {p} against {want}"
                );
            }
        }
    }

    #[test]
    fn draws_follow_the_table_at_gate_sizes() {
        // n = 40 and 41, 400,000 literal resamples against 400,000 draws
        // from the table: the distributions of the drawn medians agree
        // (largest gap between the two empirical CDFs below the
        // Kolmogorov–Smirnov 0.1% bound for two samples of this size).
        for n in [40usize, 41] {
            let values: Vec<f64> = (0..n)
                .map(|i| ((i * 37) % n) as f64 + 0.25 * i as f64)
                .collect();
            let table = MedianTable::new(n);
            let window = table.window(&values);
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let draws = 400_000;
            let mut from_table: Vec<f64> =
                (0..draws).map(|_| table.draw(&window, &mut rng)).collect();
            let mut literal: Vec<f64> = (0..draws)
                .map(|_| {
                    let mut d: Vec<f64> = (0..n)
                        .map(|_| values[rand::RngExt::random_range(&mut rng, 0..n)])
                        .collect();
                    super::super::median_in_place(&mut d)
                })
                .collect();
            from_table.sort_by(f64::total_cmp);
            literal.sort_by(f64::total_cmp);
            let mut gap: f64 = 0.0;
            let (mut a, mut b) = (0, 0);
            while a < draws && b < draws {
                let x = from_table[a].min(literal[b]);
                while a < draws && from_table[a] <= x {
                    a += 1;
                }
                while b < draws && literal[b] <= x {
                    b += 1;
                }
                gap = gap.max((a as f64 - b as f64).abs() / draws as f64);
            }
            let bound = 1.95 * (2.0 / draws as f64).sqrt();
            assert!(gap < bound, "n = {n}: KS distance {gap} above {bound}");
        }
    }

    #[test]
    fn tables_at_every_size_are_distributions_on_a_window() {
        for n in (1..=1000).step_by(37).chain([999, 1000]) {
            let t = MedianTable::new(n);
            let p = t.probabilities();
            let total: f64 = p.iter().map(|x| x.1).sum();
            assert!((total - 1.0).abs() < 1e-12, "n = {n}: total {total}");
            let (lo, hi) = t.ranks();
            assert!(
                lo <= (n - 1) / 2 && hi >= n / 2 && hi < n,
                "n = {n}: window {lo}..={hi}"
            );
            // The mean rank is the middle, by symmetry.
            let mean: f64 = p.iter().map(|((i, j), p)| 0.5 * (i + j) as f64 * p).sum();
            assert!(
                (mean - (n - 1) as f64 / 2.0).abs() < 1e-9,
                "n = {n}: mean rank {mean}"
            );
        }
    }
}
