//! The two bodies of every op agree: with the portable path forced on the CPU, every layer kind
//! and all ten presets give the kernel path's `z`, `V`, inverse and parameter gradients, and a
//! 20-step training run its bits/dim. The switch holds for the whole process, so the tests here
//! take turns (and this file is a test binary of its own, apart from the other tests).

mod common;

use std::sync::Mutex;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor};
use common::values;
use flowify::data::Dataset;
use flowify::flow::Mode;
use flowify::kernels::{fast_path, force_portable};
use flowify::layers::activation::{LeakyReluSpec, SplineSpec};
use flowify::layers::conv::ConvSpec;
use flowify::layers::coupling::{NsfConvSpec, NsfSpec};
use flowify::layers::dense::LinearSpec;
use flowify::layers::dequantize::DequantizeSpec;
use flowify::layers::max_pool::MaxPoolSpec;
use flowify::layers::reshape::FlattenSpec;
use flowify::layers::LayerSpec;
use flowify::model::{one_hot, FlowModel};
use flowify::presets::{spec, NAMES};
use flowify::spec::ModelSpec;
use flowify::train::{loss_and_gradients, train, RunOptions, TrainConfig};

static TURN: Mutex<()> = Mutex::new(());

/// What a model computes on a batch, as host values: the forward pass's `z` and `V` (sample
/// mode), the inverse of `z` in mean and in sample mode, and the loss's gradient of every
/// parameter, in the module's order.
struct Outputs {
    z: Vec<f32>,
    v: Vec<f32>,
    inverse_mean: Vec<f32>,
    inverse_sample: Vec<f32>,
    loss: f64,
    grads: Vec<Vec<f32>>,
}

fn outputs(model: &FlowModel, x: Tensor<4>, device: &Device, draw: u64) -> Outputs {
    // Each pass starts from the same seed, so both paths draw the same noise.
    // A class-conditional model is given the classes in turn.
    let c = model.classes();
    let labels: Vec<usize> = (0..x.dims()[0]).map(|i| i % c.max(1)).collect();
    let classes = (c > 0).then(|| one_hot(&labels, c, device));
    let inverse = |z: Tensor<4>, mode| match &classes {
        Some(classes) => model.inverse_given(z, classes, mode),
        None => model.inverse(z, mode),
    };
    device.seed(11);
    let (z, v) = match &classes {
        Some(classes) => model.forward_given(x.clone(), classes, Mode::Sample),
        None => model.forward(x.clone(), Mode::Sample),
    };
    let z = z.detach();
    let inverse_mean = inverse(z.clone(), Mode::Mean);
    device.seed(12);
    let inverse_sample = inverse(z.clone(), Mode::Sample);
    device.seed(13 + draw);
    let (loss, grads) = loss_and_gradients(model, x, classes.clone(), Mode::Sample);
    let mut collect = Collect(&grads, vec![]);
    model.visit(&mut collect);
    Outputs {
        z: values(z),
        v: values(v),
        inverse_mean: values(inverse_mean),
        inverse_sample: values(inverse_sample),
        loss,
        grads: collect.1,
    }
}

/// Every trainable parameter's gradient, empty where it has none.
struct Collect<'a>(&'a GradientsParams, Vec<Vec<f32>>);

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.1
            .push(self.0.get::<D>(param.id).map(values).unwrap_or_default());
    }
}

/// The largest difference between `a` and `b` relative to `b`'s largest magnitude (at least 1).
fn deviation(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// The kernel path's and the portable path's outputs of `spec`'s model (seed `seed`) on a
/// batch of two images, compared; returns the largest deviations of the values and gradients.
///
/// A spline's gradients jump where an element crosses a knot (or a tail's bound), and the two
/// paths' round-off (10⁻⁶) can move an element that sits on one across it: then one noise draw in
/// a few dozen gives gradients that differ by percents through the whole network. So gradients
/// are compared on three draws of the training noise, and the median draw must agree; an error in
/// a backward pass shows in every draw.
fn compare(spec: &ModelSpec, seed: u64, what: &str) -> (f32, f32) {
    let device = common::device(seed);
    let model = spec.init(&device).expect("a valid spec");
    let [c, h, w] = spec.input;
    let x = Tensor::<4>::random([2, c, h, w], Distribution::Uniform(0.0, 256.0), &device).floor();
    let mut values_dev = 0f32;
    let mut grads_devs = vec![];
    let mut trained = 0;
    for draw in 0..3 {
        force_portable(false);
        assert!(fast_path(&device));
        let fast = outputs(&model, x.clone(), &device, draw);
        force_portable(true);
        assert!(!fast_path(&device));
        let portable = outputs(&model, x.clone(), &device, draw);
        force_portable(false);

        for (name, a, b) in [
            ("z", &portable.z, &fast.z),
            ("V", &portable.v, &fast.v),
            (
                "mean-mode inverse",
                &portable.inverse_mean,
                &fast.inverse_mean,
            ),
            (
                "sample-mode inverse",
                &portable.inverse_sample,
                &fast.inverse_sample,
            ),
        ] {
            let d = deviation(a, b);
            assert!(d <= 2e-4, "{what}: {name} differs by {d:e} (relative)");
            values_dev = values_dev.max(d);
        }
        assert!(
            (portable.loss - fast.loss).abs() <= 1e-4 * fast.loss.abs().max(1.0),
            "{what}: loss {} vs {}",
            portable.loss,
            fast.loss
        );
        assert_eq!(portable.grads.len(), fast.grads.len());
        let mut worst = (0f32, 0);
        for (i, (a, b)) in portable.grads.iter().zip(&fast.grads).enumerate() {
            assert_eq!(
                a.is_empty(),
                b.is_empty(),
                "{what}: parameter {i} has a gradient on one path only"
            );
            let d = deviation(a, b);
            if d > worst.0 {
                worst = (d, i);
            }
        }
        grads_devs.push(worst);
        trained = fast.grads.iter().filter(|g| !g.is_empty()).count();
    }
    assert!(trained > 0, "{what}: no parameter was trained");
    grads_devs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (grads_dev, parameter) = grads_devs[1];
    assert!(
        grads_dev <= 1e-3,
        "{what}: parameter {parameter}'s gradient differs by {grads_dev:e} (relative) in the median of {grads_devs:?}"
    );
    eprintln!("{what}: values within {values_dev:.1e}, {trained} gradients within {grads_dev:.1e} (median draw)");
    (values_dev, grads_dev)
}

#[test]
fn every_preset_gives_the_same_values_and_gradients_on_both_paths() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    for dataset in [Dataset::Mnist, Dataset::Cifar10] {
        for arch in NAMES {
            compare(
                &spec(&dataset, arch).unwrap(),
                1,
                &format!("{} {arch}", dataset.name()),
            );
        }
    }
}

/// The layer kinds the presets do not hold: an augmenting dense layer, a square one, LeakyReLU,
/// a convolution whose patches overlap on a map that needs padding, and max pooling.
#[test]
fn layer_kinds_beyond_the_presets_agree_on_both_paths() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let spec = ModelSpec {
        input: [2, 8, 8],
        classes: None,
        train: Default::default(),
        layers: vec![
            LayerSpec::Dequantize(DequantizeSpec {}),
            LayerSpec::Conv(ConvSpec::new(2, 3, 3, 2)),
            LayerSpec::LeakyRelu(LeakyReluSpec { slope: 0.5 }),
            LayerSpec::MaxPool(MaxPoolSpec::new(2)),
            LayerSpec::NsfConv(NsfConvSpec::new(3, 2)),
            LayerSpec::Flatten(FlattenSpec {}),
            LayerSpec::Linear(LinearSpec::new(12, 40)),
            LayerSpec::Spline(SplineSpec::default()),
            LayerSpec::Linear(LinearSpec::new(40, 40)),
            LayerSpec::LeakyRelu(LeakyReluSpec { slope: 0.3 }),
            LayerSpec::Nsf(NsfSpec::new(40, 2)),
            LayerSpec::Linear(LinearSpec::new(40, 6)),
        ],
    };
    compare(&spec, 2, "mixed layers");

    // Class-conditional: a base mean per class, and couplings that read the class.
    let layers = spec
        .layers
        .iter()
        .map(|layer| match layer {
            LayerSpec::NsfConv(s) => LayerSpec::NsfConv(NsfConvSpec {
                classes: 3,
                ..s.clone()
            }),
            LayerSpec::Nsf(s) => LayerSpec::Nsf(NsfSpec {
                classes: 3,
                ..s.clone()
            }),
            other => other.clone(),
        })
        .collect();
    let conditional = ModelSpec {
        classes: Some(3),
        layers,
        ..spec
    };
    compare(&conditional, 3, "mixed layers, class-conditional");
}

/// ActNorm, split and average pooling (in the `multiscale` preset, its pooling padded) agree on
/// both paths too.
#[test]
fn the_multiscale_layers_give_the_same_values_and_gradients_on_both_paths() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let spec = spec(&Dataset::Mnist, "multiscale").unwrap();
    for tag in ["act_norm", "split", "avg_pool"] {
        assert!(spec.layers.iter().any(|l| l.tag() == tag), "{tag}");
    }
    compare(&spec, 5, "multiscale");
}

/// Twenty optimizer steps of `conv2_nsf` on MNIST end at the same bits/dim on both paths.
#[test]
fn twenty_training_steps_reach_the_same_bits_per_dim_on_both_paths() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let data_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    let run = |portable: bool| {
        force_portable(portable);
        let dir = tempfile::tempdir().unwrap();
        let config = TrainConfig {
            dataset: Dataset::Mnist,
            arch: "conv2_nsf".into(),
            epochs: 1,
            max_steps: Some(20),
            batch_size: 128,
            lr: 5e-4,
            seed: 3,
            data_dir: data_dir.clone(),
            log_every: 10,
            checkpoint_every: None,
            test_limit: Some(256),
            device: Default::default(),
            minutes: None,
            patience: None,
            ema: None,
        };
        let summary = train(
            &config,
            &spec(&Dataset::Mnist, "conv2_nsf").unwrap(),
            &dir.path().join("run"),
            RunOptions {
                quiet: true,
                ..Default::default()
            },
        )
        .expect("the run trains");
        force_portable(false);
        summary
    };
    let fast = run(false);
    let portable = run(true);
    eprintln!(
        "20 steps: test bits/dim {:.6} (kernels) vs {:.6} (portable), train {:.6} vs {:.6}",
        fast.test_bpd, portable.test_bpd, fast.final_train_bpd, portable.final_train_bpd
    );
    assert!(fast.test_bpd.is_finite() && fast.test_bpd < 20.0);
    assert!(
        (fast.test_bpd - portable.test_bpd).abs() <= 1e-3,
        "test bits/dim {} (kernels) vs {} (portable)",
        fast.test_bpd,
        portable.test_bpd
    );
    assert!(
        (fast.final_train_bpd - portable.final_train_bpd).abs() <= 1e-3,
        "train bits/dim {} vs {}",
        fast.final_train_bpd,
        portable.final_train_bpd
    );
}
