//! Intensity likelihoods from the scribbled voxels: one histogram per class.
//!
//! As MONAI Label's `make_histograms`, intensities in `[0, 1]` fall into `num_bins`
//! equal bins and every bin gets a pseudo-count (a Dirichlet prior), so that a bin no
//! stroke covers has a small probability instead of 0 and `-ln p` stays finite.
//!
//! MONAI Label adds 1 to every bin of both histograms. When one class has many more
//! samples than the other (background strokes usually outnumber foreground ones), an
//! intensity neither class has seen (bone, contrast, air the strokes missed) then gets
//! the larger frequency in the smaller class, and becomes confident foreground. Here
//! both histograms carry the same prior weight instead: the class with fewer samples
//! gets MONAI Label's pseudo-count of 1 per bin, and the other class pseudo-counts
//! scaled by the ratio of the sample counts. Unseen intensities then get probability
//! 1/2 and are left to the smoothness term, and the smaller class is smoothed exactly
//! as MONAI Label smooths it.

/// Pseudo-count per bin of the class with fewer samples (MONAI Label's `alpha_bg` and
/// `alpha_fg`, fixed at 1 there).
pub const PSEUDO_COUNT: f64 = 1.0;

/// Foreground and background sample counts over `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Histograms {
    foreground: Vec<f64>,
    background: Vec<f64>,
}

impl Histograms {
    /// Empty histograms of `num_bins` bins (at least 1).
    pub fn new(num_bins: usize) -> Self {
        assert!(num_bins > 0, "a histogram needs at least one bin");
        Self {
            foreground: vec![0.0; num_bins],
            background: vec![0.0; num_bins],
        }
    }

    pub fn num_bins(&self) -> usize {
        self.foreground.len()
    }

    /// The bin of `value`: `⌊value · bins⌋`, with 1 in the last bin like `np.histogram`.
    /// Values outside `[0, 1]` go to the nearest end bin and NaN to the first.
    #[inline]
    pub fn bin(&self, value: f32) -> usize {
        let bins = self.num_bins();
        // `as` saturates, and maps NaN to 0.
        ((value * bins as f32) as usize).min(bins - 1)
    }

    /// Counts a foreground sample of `value` with `weight` (1 per voxel of the grid the
    /// probabilities are used on; less for a voxel of a finer grid).
    pub fn add_foreground(&mut self, value: f32, weight: f64) {
        let b = self.bin(value);
        self.foreground[b] += weight;
    }

    /// As [`add_foreground`](Self::add_foreground), for background.
    pub fn add_background(&mut self, value: f32, weight: f64) {
        let b = self.bin(value);
        self.background[b] += weight;
    }

    /// Per bin, the probability that a voxel in it is foreground:
    /// `f / (f + b)`, where `f` and `b` are the bin's frequencies in the normalised
    /// foreground and background histograms (pseudo-counts included; see the module
    /// docs).
    ///
    /// MONAI Label instead passes the pair `(b, f)` through a softmax, meant for logits:
    /// as `f` and `b` are frequencies in `[0, 1]`, that yields `σ(f − b)`, within
    /// `[0.27, 0.73]` and close to 0.5 for 64 bins, so the smoothness term swamps the
    /// intensities. Normalising by the sum gives the likelihood ratio its full weight.
    pub fn foreground_probabilities(&self) -> Vec<f32> {
        let total = |h: &[f64]| h.iter().sum::<f64>();
        let (n_fg, n_bg) = (total(&self.foreground), total(&self.background));
        // Sample counts below 1 (an empty class, fractional weights) count as 1, so
        // that the prior's weight stays finite.
        let fewest = n_fg.min(n_bg).max(1.0);
        let normalised = |h: &[f64], n: f64| {
            let alpha = PSEUDO_COUNT * n.max(1.0) / fewest;
            let total = n + alpha * h.len() as f64;
            h.iter().map(|c| (c + alpha) / total).collect::<Vec<_>>()
        };
        let fg = normalised(&self.foreground, n_fg);
        let bg = normalised(&self.background, n_bg);
        fg.iter()
            .zip(&bg)
            .map(|(f, b)| (f / (f + b)) as f32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_the_unit_interval() {
        let h = Histograms::new(4);
        let bins: Vec<usize> = [0.0, 0.24, 0.25, 0.74, 0.75, 0.999, 1.0]
            .iter()
            .map(|&v| h.bin(v))
            .collect();
        assert_eq!(bins, [0, 0, 1, 2, 3, 3, 3]);
        assert_eq!(h.bin(-0.5), 0);
        assert_eq!(h.bin(7.0), 3);
        assert_eq!(h.bin(f32::NAN), 0);
    }

    #[test]
    fn probabilities_follow_the_counts_with_pseudo_counts() {
        let mut h = Histograms::new(2);
        for _ in 0..8 {
            h.add_foreground(0.9, 1.0);
        }
        for _ in 0..2 {
            h.add_background(0.1, 1.0);
            h.add_background(0.9, 1.0);
        }
        // Background has fewer samples (4) and gets 1 per bin: (3, 3) / 6. Foreground
        // has twice as many and gets 2 per bin: (2, 10) / 12.
        let p = h.foreground_probabilities();
        let expect = |f: f64, b: f64| (f / (f + b)) as f32;
        assert!((p[0] - expect(2.0 / 12.0, 0.5)).abs() < 1e-6, "{p:?}");
        assert!((p[1] - expect(10.0 / 12.0, 0.5)).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn unseen_bins_are_neutral_whatever_the_sample_sizes() {
        let mut h = Histograms::new(8);
        h.add_foreground(0.3, 10.0);
        h.add_background(0.7, 1000.0);
        let p = h.foreground_probabilities();
        for (bin, &p) in p.iter().enumerate() {
            match bin {
                // fg: 11 / 18 against bg: 100 / 1800, and the mirror image.
                2 => assert!((p - 11.0 / 12.0).abs() < 1e-6, "{p}"),
                5 => assert!((p - 1.0 / 12.0).abs() < 1e-6, "{p}"),
                _ => assert!((p - 0.5).abs() < 1e-6, "bin {bin}: {p}"),
            }
        }
    }

    #[test]
    fn empty_histograms_are_uninformative_not_degenerate() {
        let mut h = Histograms::new(8);
        let p = h.foreground_probabilities();
        assert!(p.iter().all(|&p| (p - 0.5).abs() < 1e-6), "{p:?}");
        // With one class empty nothing can be told apart: every probability stays
        // strictly inside (0, 1), the sampled bin above the others.
        h.add_foreground(0.5, 1e6);
        let p = h.foreground_probabilities();
        assert!(p.iter().all(|&p| p > 0.0 && p < 1.0), "{p:?}");
        assert!(p[4] > p[0] && p[0] == p[7], "{p:?}");
    }

    #[test]
    fn weights_scale_counts() {
        let (mut a, mut b) = (Histograms::new(3), Histograms::new(3));
        a.add_background(0.5, 4.0);
        for _ in 0..16 {
            b.add_background(0.5, 0.25);
        }
        assert_eq!(a, b);
    }
}
