//! The moving average of the weights (src/average.rs): its update rule, and rotations that it
//! returns to the orthogonal group.

mod common;

use burn::tensor::{Distribution, Tensor};
use common::{device, named_parameters};
use flowify::average::WeightAverage;
use flowify::data::Dataset;
use flowify::kernels::adam::FusedAdam;
use flowify::model::FlowModel;
use flowify::presets::spec;
use flowify::train::train_step;

#[test]
fn the_average_follows_its_update_rule_step_by_step() {
    let dev = device(3);
    let mut model = spec(&Dataset::Mnist, "conv2").unwrap().init(&dev).unwrap();
    let x = Tensor::<4>::random([4, 1, 28, 28], Distribution::Uniform(0.0, 256.0), &dev).floor();
    let mut optim = FusedAdam::init();
    let mut average = WeightAverage::new(0.9, &model);
    assert_eq!(average.decay_at(0), 0.1);
    assert_eq!(average.decay_at(8), 0.5);
    assert_eq!(average.decay_at(1000), 0.9);

    let first = named_parameters(&model);
    let mut expected: Vec<Vec<f64>> = first
        .iter()
        .map(|(_, v)| v.iter().map(|&x| x as f64).collect())
        .collect();
    for step in 0..4 {
        model = train_step(model, &mut optim, x.clone(), None, 1e-2, step).0;
        average.update(&model, step);
        let d = average.decay_at(step);
        for (e, (_, now)) in expected.iter_mut().zip(named_parameters(&model)) {
            for (e, &p) in e.iter_mut().zip(&now) {
                *e = d * *e + (1.0 - d) * p as f64;
            }
        }
    }
    let (last, averaged) = (named_parameters(&model), named_parameters(average.raw()));
    assert_eq!(averaged.len(), expected.len());
    let (mut moved, mut apart) = (0.0f64, 0.0f64);
    for (((name, a), e), ((_, l), (_, f))) in
        averaged.iter().zip(&expected).zip(last.iter().zip(&first))
    {
        for (i, (&a, &e)) in a.iter().zip(e).enumerate() {
            assert!(
                (a as f64 - e).abs() <= 1e-6 * (1.0 + e.abs()),
                "{name}[{i}]: average {a}, by hand {e}"
            );
        }
        for ((&l, &f), &a) in l.iter().zip(f).zip(a) {
            moved = moved.max((l - f).abs() as f64);
            apart = apart.max((l - a).abs() as f64);
        }
    }
    // Training moved the weights, and the average is not simply the last of them.
    assert!(moved > 1e-3 && apart > 1e-4, "moved {moved}, apart {apart}");
}

/// Largest `|B·Bᵀ − I|` entry of the `d × d` matrix `b`.
fn off_group(b: &[f32]) -> f64 {
    let d = (b.len() as f64).sqrt() as usize;
    let mut worst = 0.0f64;
    for i in 0..d {
        for j in 0..d {
            let dot: f64 = (0..d)
                .map(|k| b[i * d + k] as f64 * b[j * d + k] as f64)
                .sum();
            worst = worst.max((dot - if i == j { 1.0 } else { 0.0 }).abs());
        }
    }
    worst
}

#[test]
fn the_averaged_rotations_are_put_back_on_the_group() {
    // Two unrelated models: one update weighs them 1 : 9, far from any rotation.
    let (a, b) = (device(5), device(6));
    let arch = spec(&Dataset::Mnist, "conv2").unwrap();
    let first = arch.init(&a).unwrap();
    let second = arch.init(&b).unwrap();
    let mut average = WeightAverage::new(0.999, &first);
    average.update(&second, 0);
    let bases = |model: &FlowModel| -> Vec<(String, f64)> {
        named_parameters(model)
            .into_iter()
            .filter(|(name, _)| name.ends_with("base"))
            .map(|(name, v)| (name, off_group(&v)))
            .collect()
    };
    let (raw, polished) = (bases(average.raw()), bases(&average.model()));
    assert!(!raw.is_empty(), "conv2 holds rotations");
    assert!(
        raw.iter().any(|(_, e)| *e > 1e-2),
        "the raw average should be off the group: {raw:?}"
    );
    for (name, e) in polished {
        assert!(e < 1e-5, "{name}: |B·Bᵀ − I| = {e} after polishing");
    }
}
