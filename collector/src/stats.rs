//! Latency statistics by nearest rank: the one percentile definition the cold-start report, the
//! lab and the benchmarks share, so their medians agree on the same sample.
//!
//! The nearest-rank `p`th percentile of `n` sorted values is the value at rank `⌈p/100 · n⌉`
//! (at least 1): always a measured value, never an interpolation between two.

use serde::{Deserialize, Serialize};

/// The nearest-rank percentile `p` (0–100) of sorted values; `None` for no values.
pub fn nearest_rank<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The nearest-rank percentile `p` (0–100) of sorted values; NaN for no values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    nearest_rank(sorted, p).unwrap_or(f64::NAN)
}

/// Latency statistics over a set of durations in nanoseconds (the cold-start report's unit).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
pub struct Stats {
    pub n: usize,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub min_ns: u64,
    pub max_ns: u64,
}

impl Stats {
    /// Statistics of `values` (sorted in place); `None` for no values.
    pub fn of(values: &mut [u64]) -> Option<Stats> {
        values.sort_unstable();
        let rank = |p| nearest_rank(values, p);
        Some(Stats {
            n: values.len(),
            p50_ns: rank(50.0)?,
            p90_ns: rank(90.0)?,
            p99_ns: rank(99.0)?,
            min_ns: *values.first()?,
            max_ns: *values.last()?,
        })
    }
}

/// Summary of a sample in milliseconds (the lab's and the benchmarks' unit), mean included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises the finite values of `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let rank = |p| nearest_rank(&sorted, p);
        Some(Summary {
            n: sorted.len(),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            min: *sorted.first()?,
            p50: rank(50.0)?,
            p90: rank(90.0)?,
            p99: rank(99.0)?,
            max: *sorted.last()?,
        })
    }
}

/// Milliseconds of a duration, as a float.
pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        let s = Stats::of(&mut v).unwrap();
        assert_eq!(
            (s.n, s.p50_ns, s.p90_ns, s.p99_ns, s.min_ns, s.max_ns),
            (100, 50, 90, 99, 1, 100)
        );
        assert_eq!(Stats::of(&mut [7]).unwrap().p99_ns, 7);
        assert!(Stats::of(&mut []).is_none());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&values).unwrap();
        assert_eq!(
            (s.p50, s.p90, s.p99, s.max, s.min),
            (50.0, 90.0, 99.0, 100.0, 1.0)
        );
        assert_eq!(s.mean, 50.5);
        let one = Summary::of(&[7.0]).unwrap();
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn both_units_agree_on_the_same_sample() {
        let mut ns: Vec<u64> = vec![5, 1, 9, 3, 7, 2];
        let ms: Vec<f64> = ns.iter().map(|v| *v as f64).collect();
        let (s, m) = (Stats::of(&mut ns).unwrap(), Summary::of(&ms).unwrap());
        assert_eq!(
            (s.p50_ns as f64, s.p90_ns as f64, s.p99_ns as f64),
            (m.p50, m.p90, m.p99)
        );
        assert_eq!((s.p50_ns, percentile(&ms_sorted(&ms), 50.0)), (3, 3.0));
        assert!(percentile(&[], 50.0).is_nan());
        assert_eq!(nearest_rank(&[1, 2, 3], 0.0), Some(1));
        assert_eq!(nearest_rank(&[1, 2, 3], 100.0), Some(3));
    }

    fn ms_sorted(v: &[f64]) -> Vec<f64> {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v
    }
}
