//! Class-conditional models (docs/method.md §1.4): couplings given the class stay invertible
//! with their log-determinant, the per-class log-likelihoods are the model given each class,
//! the marginal is their mean, a class's mean latent is where its samples come from, and a
//! short run on a labelled toy set learns to classify and to draw each class.

mod common;

use std::path::PathBuf;

use burn::tensor::{Device, Tensor};
use common::*;
use flowify::data::{self, Split, Toy};
use flowify::eval::classify;
use flowify::flow::{Mode, Transform};
use flowify::kernels::adam::FusedAdam;
use flowify::model::{one_hot, FlowModel};
use flowify::spec::ModelSpec;
use flowify::train::{load_run, train, train_step, RunOptions};

/// A flat model whose second layer reads the class.
const DENSE: &str = r#"input = [4]
classes = 3
layers = [
  { layer = "linear", d_input = 4, d_output = 4 },
  { layer = "nsf", features = 4, couplings = 2, hidden = 16, depth = 1, classes = 3 },
]"#;

/// An image model whose convolutional coupling reads the class.
const CONV: &str = r#"input = [2, 4, 4]
classes = 3
layers = [
  { layer = "nsf_conv", channels = 2, couplings = 2, hidden = 8, depth = 1, classes = 3 },
  { layer = "flatten" },
  { layer = "nsf", features = 32, couplings = 1, hidden = 16, depth = 1 },
]"#;

fn spec(text: &str) -> ModelSpec {
    ModelSpec::parse(text, false).unwrap().resolved().unwrap()
}

/// `DENSE` with the class read by the base alone.
fn base_only() -> ModelSpec {
    spec(&DENSE.replace(", classes = 3 }", " }"))
}

/// The labels `0, 1, …, C−1, 0, …` of a batch.
fn labels(batch: usize, classes: usize) -> Vec<usize> {
    (0..batch).map(|i| i % classes).collect()
}

/// The model of `spec` after a few steps on random data, so that the class means and the
/// conditioners' class weights are no longer at their initial values.
fn trained(spec: &ModelSpec, dev: &Device) -> FlowModel {
    let [c, h, w] = spec.input;
    let classes = spec.classes.unwrap();
    let given = one_hot(&labels(32, classes), classes, dev);
    let mut model = spec.init(dev).unwrap();
    let mut optim = FusedAdam::init();
    for step in 0..5 {
        // Each class's data shifted its own way, so the classes differ.
        let shift = given.clone().matmul(random([classes, c * h * w], 1.0, dev));
        let x = random([32, c * h * w], 1.0, dev) + shift;
        let x = x.reshape([32, c, h, w]);
        model = train_step(model, &mut optim, x, Some(given.clone()), 1e-2, step).0;
    }
    model
}

#[test]
fn a_coupling_given_the_class_inverts_and_its_log_det_is_the_jacobians() {
    let dev = device(3);
    let spec = spec(CONV);
    let layer = spec.layers[0].init([2, 4, 4], &dev);
    let x = random([3, 2, 4, 4], 1.0, &dev);
    let given = one_hot(&[0, 1, 2], 3, &dev);
    let (z, v) = layer.forward_given(x.clone(), &given, Mode::Mean);
    let back = layer.inverse_given(z.clone(), &given, Mode::Mean);
    assert_close(
        &values(back),
        &values(x.clone()),
        1e-4,
        "inverse given the class",
    );

    // Another class, another map.
    let other = one_hot(&[1, 2, 0], 3, &dev);
    let (z_other, _) = layer.forward_given(x.clone(), &other, Mode::Mean);
    let moved = values(z.clone())
        .iter()
        .zip(values(z_other))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(moved > 1e-3, "the class changed z by {moved} at most");

    // V of each example is log |det ∂z/∂x| of its own map.
    let xs = values(x);
    let vs = values(v);
    for (i, row) in xs.chunks(32).enumerate() {
        let class = one_hot(&[i], 3, &dev);
        let map = |input: Tensor<2>| {
            let (z, _) = layer.forward_given(input.reshape([1, 2, 4, 4]), &class, Mode::Mean);
            z.reshape([1, 32])
        };
        let expected = log_abs_det(jacobian(map, row, &dev));
        assert!(
            (f64::from(vs[i]) - expected).abs() < 1e-3 * (1.0 + expected.abs()),
            "example {i}: V {} vs log|det J| {expected}",
            vs[i]
        );
    }
}

#[test]
fn class_log_likelihoods_are_the_model_given_each_class_and_the_marginal_their_mean() {
    let dev = device(5);
    for spec in [spec(DENSE), base_only(), spec(CONV)] {
        let model = trained(&spec, &dev);
        let [c, h, w] = spec.input;
        let x = random([6, c, h, w], 1.0, &dev);
        let per_class = values(model.class_log_likelihoods(x.clone(), Mode::Mean));
        for class in 0..3 {
            let given = one_hot(&[class; 6], 3, &dev);
            let expected = values(model.log_likelihood_given(x.clone(), &given, Mode::Mean));
            let column: Vec<f32> = per_class.iter().skip(class).step_by(3).copied().collect();
            assert_close(&column, &expected, 1e-5, &format!("class {class}"));
        }
        let marginal: Vec<f32> = per_class
            .chunks(3)
            .map(|row| {
                let mean: f64 = row.iter().map(|&l| f64::from(l).exp()).sum::<f64>() / 3.0;
                mean.ln() as f32
            })
            .collect();
        let ours = values(model.log_likelihood(x, Mode::Mean));
        assert_close(&ours, &marginal, 1e-5, "marginal");
    }
}

#[test]
fn the_base_of_a_class_is_a_unit_normal_around_its_mean() {
    let dev = device(7);
    let model = trained(&base_only(), &dev);
    let means = values(model.class_means().unwrap());
    assert!(
        means.iter().any(|m| m.abs() > 1e-3),
        "the means did not move"
    );
    let x = random([3, 4, 1, 1], 1.0, &dev);
    let given = one_hot(&[2, 0, 1], 3, &dev);
    let (z, v) = model.forward_given(x.clone(), &given, Mode::Mean);
    let (z, v) = (values(z), values(v));
    let ours = values(model.log_likelihood_given(x, &given, Mode::Mean));
    for (i, class) in [2usize, 0, 1].into_iter().enumerate() {
        let base: f64 = (0..4)
            .map(|j| {
                let d = f64::from(z[i * 4 + j] - means[class * 4 + j]);
                -0.5 * d * d - 0.5 * (2.0 * std::f64::consts::PI).ln()
            })
            .sum();
        let expected = f64::from(v[i]) + base;
        assert!(
            (f64::from(ours[i]) - expected).abs() < 1e-4,
            "example {i}: {} vs {expected}",
            ours[i]
        );
    }
}

#[test]
fn a_class_drawn_at_temperature_zero_is_the_image_of_its_mean() {
    let dev = device(11);
    let model = trained(&spec(DENSE), &dev);
    let given = one_hot(&[0, 1, 2], 3, &dev);
    let samples = model.sample_given(&given, Mode::Mean, 0.0);
    let (z, _) = model.forward_given(samples, &given, Mode::Mean);
    assert_close(
        &values(z),
        &values(model.class_means().unwrap()),
        1e-4,
        "latent of a class's sample at T = 0",
    );
}

#[test]
fn a_spec_reads_only_the_classes_it_has() {
    let error = |text: &str| {
        ModelSpec::parse(text, false)
            .and_then(|s| s.resolved())
            .unwrap_err()
    };
    let no_classes = error(&DENSE.replace("classes = 3\nlayers", "layers"));
    assert!(
        no_classes.starts_with("layer 1 (nsf): classes: 3 needs a class-conditional model"),
        "{no_classes}"
    );
    let other = error(&DENSE.replace("classes = 3\nlayers", "classes = 4\nlayers"));
    assert!(other.contains("needs the model's 4"), "{other}");
    let one = error(&DENSE.replace("classes = 3\nlayers", "classes = 1\nlayers"));
    assert!(
        one.starts_with("classes: expected an integer ≥ 2, got 1"),
        "{one}"
    );
    assert!(base_only()
        .conditional(5)
        .unwrap_err()
        .contains("3 classes, the data 5"));

    // Written out and read back; counted as built: 3 means of 4 values, and each conditioner's
    // first layer 3 inputs wider.
    let dense = spec(DENSE);
    assert_eq!(spec(&dense.to_toml()), dense);
    let dev = device(1);
    for s in [spec(DENSE), base_only(), spec(CONV)] {
        assert_eq!(
            s.params().unwrap(),
            s.init(&dev).unwrap().trainable_params()
        );
    }
    let unconditional = ModelSpec {
        classes: None,
        ..base_only()
    };
    let extra = 3 * 4 + 2 * 3 * 16;
    assert_eq!(
        dense.params().unwrap(),
        unconditional.params().unwrap() + extra
    );
}

#[test]
fn a_short_conditional_run_on_eight_gaussians_classifies_and_draws_each_class() {
    let out = tempfile::tempdir().unwrap();
    let config = toy_config(Toy::EightGaussians, 1000);
    let dataset = config.dataset.clone();
    let spec = flowify::presets::spec(&dataset, "dense")
        .unwrap()
        .conditional(8)
        .unwrap();
    let quiet = RunOptions {
        quiet: true,
        ..Default::default()
    };
    train(&config, &spec, out.path(), quiet).unwrap();
    let device = Device::flex();
    device.seed(2);
    let (_, model) = load_run(out.path(), &device).unwrap();
    let test = data::load(&dataset, &PathBuf::new(), Split::Test)
        .unwrap()
        .truncated(2000);
    let accuracy = classify(&model, &test, 500, &device).accuracy;
    // Untrained, every class scores the same and the rule picks class 0: one point in eight.
    let fitted = spec.fitted(&test).unwrap();
    let untrained = classify(&fitted.init(&device).unwrap(), &test, 500, &device).accuracy;
    eprintln!("Bayes-rule accuracy: untrained {untrained:.4}, trained {accuracy:.4}");
    assert!(accuracy > 0.9, "trained: {accuracy}");
    assert!(untrained < 0.3, "untrained: {untrained}");

    // Component k is centred at 2√2 (cos kπ/4, sin kπ/4). After this short run a class's
    // samples still spill onto its neighbours (a model that ignored the class would put one in
    // eight near each centre), but its own centre is the nearest for more of them than any other.
    let centre = |k: usize| {
        let angle = k as f32 * std::f32::consts::FRAC_PI_4;
        [
            2.0 * 2f32.sqrt() * angle.cos(),
            2.0 * 2f32.sqrt() * angle.sin(),
        ]
    };
    let nearest = |p: &[f32]| {
        (0..8)
            .min_by(|&a, &b| {
                let d = |k| (p[0] - centre(k)[0]).powi(2) + (p[1] - centre(k)[1]).powi(2);
                d(a).total_cmp(&d(b))
            })
            .unwrap()
    };
    for class in 0..8 {
        let given = one_hot(&[class; 500], 8, &device);
        let points = values(model.sample_given(&given, Mode::Sample, 1.0));
        let mut nearest_count = [0; 8];
        points
            .chunks(2)
            .for_each(|p| nearest_count[nearest(p)] += 1);
        let own = nearest_count[class] as f32 / 500.0;
        eprintln!("class {class}: {nearest_count:?} samples nearest each centre");
        assert!(
            own > 0.4 && nearest_count.iter().all(|&n| n <= nearest_count[class]),
            "class {class}: {nearest_count:?} samples nearest each centre"
        );
    }
}
