//! Percentiles for benchmarks and evaluations: one definition everywhere.

/// The `p` quantile (0..=1) of ascending `sorted` by the nearest-rank method; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Latency percentiles of repeated benchmark runs.
#[derive(Default)]
pub struct Runs {
    p50s: Vec<f64>,
    p99s: Vec<f64>,
}

impl Runs {
    /// Adds one run's samples in nanoseconds; returns its p50 and p99 in µs.
    pub fn add(&mut self, mut ns: Vec<f64>) -> (f64, f64) {
        ns.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&ns, 0.5) / 1e3, percentile(&ns, 0.99) / 1e3);
        self.p50s.push(p50);
        self.p99s.push(p99);
        (p50, p99)
    }

    /// The medians over the runs of their p50 and p99, in µs.
    pub fn medians(&self) -> (f64, f64) {
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            percentile(&v, 0.5)
        };
        (median(&self.p50s), median(&self.p99s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!((percentile(&v, 0.5), percentile(&v, 0.99), percentile(&v, 1.0)), (50.0, 99.0, 100.0));
        assert!(percentile(&[], 0.5).is_nan());
        let mut runs = Runs::default();
        runs.add(vec![3000.0, 1000.0, 2000.0]);
        runs.add(vec![5000.0]);
        runs.add(vec![4000.0]);
        assert_eq!(runs.medians(), (4.0, 4.0));
    }
}
