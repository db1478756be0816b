//! Evaluation: bits/dim over a whole split, with the one-sample bound and the K-sample
//! importance-weighted bound of docs/method.md §1.3; for a class-conditional model, the
//! accuracy of the flow as a classifier (§1.4).

use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use crate::data::Examples;
use crate::flow::{host_values, Mode};
use crate::model::{one_hot, FlowModel};

/// Test-set figures of one evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Mean bits/dim of one stochastic forward pass per image (the figure the paper reports).
    pub bpd: f64,
    /// The same pass's mean log-likelihood per example in nats (the tabular benchmarks' figure).
    pub log_likelihood: f64,
    /// Mean bits/dim of `−log mean_k exp(L_k)` over `samples` passes; `None` for one sample.
    pub iw_bpd: Option<f64>,
    /// `K`, the forward passes per image.
    pub samples: usize,
    /// Images evaluated.
    pub images: usize,
}

/// The examples at `indices` as a float batch `[n, C, H, W]` (images as pixel values).
pub fn batch_tensor(set: &Examples, indices: &[usize], device: &Device) -> Tensor<4> {
    let mut values = Vec::with_capacity(indices.len() * set.dim());
    for &i in indices {
        set.extend_with(i, &mut values);
    }
    let shape = [indices.len(), set.channels, set.height, set.width];
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// The classes of the examples at `indices`, one-hot, for a model of `classes` classes; `None`
/// for an unconditional model (`classes = 0`).
///
/// # Panics
/// If a label is not below `classes`.
pub fn batch_classes(
    set: &Examples,
    indices: &[usize],
    classes: usize,
    device: &Device,
) -> Option<Tensor<2>> {
    let labels: Vec<usize> = indices
        .iter()
        .map(|&i| usize::from(set.labels[i]))
        .collect();
    (classes > 0).then(|| one_hot(&labels, classes, device))
}

/// Bits/dim of `model` over every image of `set`, with `samples ≥ 1` forward passes per image:
/// of `−log p(x | c)`, each example given its own class, in a class-conditional model. `model`
/// should be on a device without autodiff (`model.valid()`).
pub fn evaluate(
    model: &FlowModel,
    set: &Examples,
    batch_size: usize,
    samples: usize,
    device: &Device,
) -> Evaluation {
    let samples = samples.max(1);
    let (mut one, mut weighted) = (0.0, 0.0);
    let indices: Vec<usize> = (0..set.len).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let classes = batch_classes(set, chunk, model.classes(), device);
        let x = batch_tensor(set, chunk, device);
        let scores = log_likelihoods(model, x, classes.as_ref(), samples);
        one += scores.one.iter().sum::<f64>();
        weighted += scores.bound.iter().sum::<f64>();
    }
    let n = set.len as f64;
    Evaluation {
        bpd: model.bits_per_dim(one / n),
        log_likelihood: one / n,
        iw_bpd: (samples > 1).then(|| model.bits_per_dim(weighted / n)),
        samples,
        images: set.len,
    }
}

/// Per-input log-likelihoods in nats.
pub struct Scores {
    /// `L` of one stochastic forward pass.
    pub one: Vec<f64>,
    /// The `K`-sample importance-weighted bound `log mean_k exp(L_k)`, `K` passes (the first
    /// being `one`'s); equal to `one` for `K = 1`.
    pub bound: Vec<f64>,
}

/// The log-likelihoods of every input of the batch `x` over `samples ≥ 1` forward passes: given
/// each input's class where `classes` holds them, else (in a class-conditional model) the
/// marginal over the classes.
pub fn log_likelihoods(
    model: &FlowModel,
    x: Tensor<4>,
    classes: Option<&Tensor<2>>,
    samples: usize,
) -> Scores {
    let mut passes: Vec<Vec<f64>> = (0..samples.max(1))
        .map(|_| {
            let pass = match classes {
                Some(classes) => model.log_likelihood_given(x.clone(), classes, Mode::Sample),
                None => model.log_likelihood(x.clone(), Mode::Sample),
            };
            host_values(pass).into_iter().map(f64::from).collect()
        })
        .collect();
    let bound = (0..passes[0].len())
        .map(|i| log_mean_exp(passes.iter().map(|p| p[i])))
        .collect();
    Scores {
        one: passes.swap_remove(0),
        bound,
    }
}

/// A class-conditional model as a generative classifier over a split (docs/method.md §1.4).
#[derive(Debug, Clone, Serialize)]
pub struct Classification {
    /// The share of examples whose class is `argmax_c L(x | c)`, the Bayes rule under equally
    /// likely classes.
    pub accuracy: f64,
    /// Mean bits/dim of the marginal `−log (1/C) Σ_c exp L(x | c)`, the label not given.
    pub marginal_bpd: f64,
    /// The same marginal as a mean log-likelihood in nats per example.
    pub marginal_log_likelihood: f64,
    /// Examples classified.
    pub examples: usize,
}

/// How well the class-conditional `model` classifies `set`, from one pass per class and example
/// (the classes' passes drawing the same noise).
///
/// # Panics
/// If `model` is not class-conditional.
pub fn classify(
    model: &FlowModel,
    set: &Examples,
    batch_size: usize,
    device: &Device,
) -> Classification {
    let (mut correct, mut marginal) = (0usize, 0.0);
    let indices: Vec<usize> = (0..set.len).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let per_class = model.class_log_likelihoods(batch_tensor(set, chunk, device), Mode::Sample);
        let classes = per_class.dims()[1];
        let values = host_values(per_class);
        for (row, &i) in values.chunks(classes).zip(chunk) {
            let row: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
            let best = (0..classes).fold(0, |best, c| if row[c] > row[best] { c } else { best });
            correct += usize::from(best == usize::from(set.labels[i]));
            marginal += log_mean_exp(row.iter().copied());
        }
    }
    let n = set.len as f64;
    Classification {
        accuracy: correct as f64 / n,
        marginal_bpd: model.bits_per_dim(marginal / n),
        marginal_log_likelihood: marginal / n,
        examples: set.len,
    }
}

/// The area under the ROC curve of telling `inside` from `outside` by a score, higher meaning
/// inside: the probability that a random input of `inside` scores above one of `outside`, ties
/// counting half (the Mann–Whitney statistic, from ranks).
pub fn auroc(inside: &[f64], outside: &[f64]) -> f64 {
    let mut all: Vec<(f64, bool)> = inside
        .iter()
        .map(|&s| (s, true))
        .chain(outside.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum = 0.0;
    let mut start = 0;
    while start < all.len() {
        let end = start
            + all[start..]
                .iter()
                .take_while(|v| v.0 == all[start].0)
                .count();
        // Tied scores share the mean of their ranks (1-based).
        let rank = (start + end + 1) as f64 / 2.0;
        rank_sum += rank * all[start..end].iter().filter(|v| v.1).count() as f64;
        start = end;
    }
    let (n_in, n_out) = (inside.len() as f64, outside.len() as f64);
    (rank_sum - n_in * (n_in + 1.0) / 2.0) / (n_in * n_out)
}

/// `log((1/K) Σ exp(a_k))`, computed stably.
pub fn log_mean_exp(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = values.clone().fold(f64::NEG_INFINITY, f64::max);
    let count = values.clone().count() as f64;
    max + (values.map(|v| (v - max).exp()).sum::<f64>() / count).ln()
}

#[cfg(test)]
mod tests {
    use super::auroc;

    /// Against the definition, counted pair by pair, on scores with ties.
    #[test]
    fn auroc_is_the_probability_that_inside_scores_higher() {
        let inside = [3.0, 1.0, 2.0, 2.0, 5.0, -1.0];
        let outside = [0.0, 2.0, 1.0, 4.0];
        let mut pairs = 0.0;
        for a in inside {
            for b in outside {
                pairs += if a > b {
                    1.0
                } else if a == b {
                    0.5
                } else {
                    0.0
                };
            }
        }
        let expected = pairs / (inside.len() * outside.len()) as f64;
        assert!((auroc(&inside, &outside) - expected).abs() < 1e-12);
        assert_eq!(auroc(&[2.0, 3.0], &[0.0, 1.0]), 1.0);
        assert_eq!(auroc(&[0.0], &[1.0]), 0.0);
    }
}
