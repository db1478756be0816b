//! Densities on the plane, for 2-D data: a square grid around the data, histograms of points on
//! it, the model's density `E_u[exp L]` at its cells, and the energy distance between two sets
//! of points (how training's pictures and tests judge a 2-D model).

use burn::tensor::{Device, Tensor, TensorData};

use crate::eval::log_likelihoods;
use crate::model::FlowModel;

/// An `n × n` grid of square cells on the window `[lo, hi]²`. Cells are listed row by row from
/// the top (largest y), as a picture's pixels are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    /// Lower end of both axes.
    pub lo: f64,
    /// Upper end of both axes.
    pub hi: f64,
    /// Cells per side.
    pub n: usize,
}

impl Grid {
    /// The square window around `points` (`(x, y)` pairs) with a margin of a tenth of its side.
    pub fn around(points: &[f32], n: usize) -> Self {
        let (lo, hi) = points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(f64::from(v)), hi.max(f64::from(v)))
            });
        let (lo, hi) = if lo < hi { (lo, hi) } else { (-1.0, 1.0) };
        let margin = 0.1 * (hi - lo);
        Self {
            lo: lo - margin,
            hi: hi + margin,
            n,
        }
    }

    /// Side of a cell.
    pub fn step(&self) -> f64 {
        (self.hi - self.lo) / self.n as f64
    }

    /// The cells' centres as `(x, y)` pairs, row by row from the top.
    pub fn centres(&self) -> Vec<f32> {
        let (n, h) = (self.n, self.step());
        (0..n * n)
            .flat_map(|cell| {
                let (row, col) = (cell / n, cell % n);
                let x = self.lo + (col as f64 + 0.5) * h;
                let y = self.hi - (row as f64 + 0.5) * h;
                [x as f32, y as f32]
            })
            .collect()
    }

    /// The cell holding `(x, y)`, if the window does.
    fn cell(&self, x: f64, y: f64) -> Option<usize> {
        let h = self.step();
        let col = ((x - self.lo) / h).floor();
        let row = ((self.hi - y) / h).floor();
        let inside = |v: f64| v >= 0.0 && v < self.n as f64;
        (inside(col) && inside(row)).then(|| row as usize * self.n + col as usize)
    }

    /// The density of `points` per cell: the share of all points in it over the cell's area.
    pub fn histogram(&self, points: &[f32]) -> Vec<f64> {
        let mut counts = vec![0.0; self.n * self.n];
        let share = 1.0 / ((points.len() / 2).max(1) as f64 * self.step().powi(2));
        for p in points.chunks_exact(2) {
            if let Some(cell) = self.cell(f64::from(p[0]), f64::from(p[1])) {
                counts[cell] += share;
            }
        }
        counts
    }

    /// `model`'s density at each cell's centre, `exp` of the `samples`-pass estimate
    /// `log mean_k exp L_k` (docs/method.md §1.3): exact for a model of bijections.
    pub fn density(&self, model: &FlowModel, samples: usize, device: &Device) -> Vec<f64> {
        let centres = self.centres();
        centres
            .chunks(2 * 4096)
            .flat_map(|chunk| {
                let x = TensorData::new(chunk.to_vec(), [chunk.len() / 2, 2, 1, 1]);
                let scores = log_likelihoods(model, Tensor::from_data(x, device), None, samples);
                scores.bound.into_iter().map(f64::exp)
            })
            .collect()
    }
}

/// The energy distance `2 E|a − b| − E|a − a'| − E|b − b'|` between two sets of `(x, y)` pairs
/// (Székely and Rizzo): 0 for sets from one distribution, in the limit of many points.
pub fn energy_distance(a: &[f32], b: &[f32]) -> f64 {
    let mean_distance = |p: &[f32], q: &[f32]| {
        let mut sum = 0.0;
        for u in p.chunks_exact(2) {
            for v in q.chunks_exact(2) {
                sum += f64::from(u[0] - v[0]).hypot(f64::from(u[1] - v[1]));
            }
        }
        sum / ((p.len() / 2) * (q.len() / 2)) as f64
    };
    2.0 * mean_distance(a, b) - mean_distance(a, a) - mean_distance(b, b)
}
