//! 2-D densities (issue: densities beyond the image benchmarks): a short run on a toy set draws
//! samples that match the data where the untrained model's do not, and its density integrates
//! to 1 on a grid. In a binary of its own: burn's generator is one per process.

mod common;

use std::path::PathBuf;

use burn::tensor::Device;
use common::toy_config;
use flowify::data::{self, Dataset, Split, Toy};
use flowify::flow::{host_values, Mode};
use flowify::plane::{energy_distance, Grid};
use flowify::train::{load_run, train, RunOptions};

/// The first `n` points of a toy set's test split.
fn points(toy: Toy, n: usize) -> Vec<f32> {
    let test = data::load(&Dataset::Toy(toy), &PathBuf::new(), Split::Test).unwrap();
    (0..n).fold(vec![], |mut v, i| {
        test.extend_with(i, &mut v);
        v
    })
}

#[test]
fn a_short_run_on_moons_samples_the_data_and_its_density_integrates_to_one() {
    let out = tempfile::tempdir().unwrap();
    let config = toy_config(Toy::Moons, 600);
    let spec = flowify::presets::spec(&config.dataset, "dense").unwrap();
    let device = Device::flex();
    device.seed(1);
    let untrained = spec.init(&device).unwrap();
    let quiet = RunOptions {
        quiet: true,
        ..Default::default()
    };
    train(&config, &spec, out.path(), quiet).unwrap();
    let (_, trained) = load_run(out.path(), &device).unwrap();
    assert!(out.path().join("samples/epoch-001.png").exists());

    let data = points(Toy::Moons, 2000);
    // A second draw of the data itself: how close two sets of 2000 points of one law come.
    let other = points(Toy::Moons, 4000)[4000..].to_vec();
    let draw = |model: &flowify::model::FlowModel| {
        host_values(model.sample(2000, Mode::Sample, 1.0, &device))
    };
    let floor = energy_distance(&data, &other);
    let before = energy_distance(&data, &draw(&untrained));
    let after = energy_distance(&data, &draw(&trained));
    eprintln!("energy distance to the moons' test points: data {floor:.4}, untrained {before:.4}, trained {after:.4}");
    assert!(after < 0.01, "trained: {after}");
    assert!(before > 0.1, "untrained: {before}");

    // The window holds all but a sliver of the mass; the midpoint rule's error on cells of
    // 0.04 is well under 1%.
    let grid = Grid {
        lo: -6.0,
        hi: 6.0,
        n: 300,
    };
    let mass: f64 = grid.density(&trained, 1, &device).iter().sum::<f64>() * grid.step().powi(2);
    eprintln!("∫ p over [-6, 6]² = {mass:.4}");
    assert!((mass - 1.0).abs() < 0.02, "{mass}");
}
