//! Every trainable parameter of every layer kind moves in training.
//!
//! Alone in its test binary on purpose: burn's `flex` generator is one per process, so tests
//! running beside it would take draws from its sequence and make its initial weights depend on
//! the test schedule.

mod common;

use burn::tensor::{Distribution, Tensor};
use common::*;
use flowify::spec::ModelSpec;

/// Every trainable parameter of every layer kind moves in training, in a fresh run (after the
/// data-dependent initialization) as in a resumed one; in a class-conditional model, so the
/// class means and the couplings' class inputs are among them.
#[test]
fn every_parameter_of_every_layer_kind_trains() {
    let text = r#"input = [1, 16, 16]
classes = 2
layers = [
  { layer = "standardize" },
  { layer = "dequantize" },
  { layer = "conv", c_in = 1, c_out = 4, kernel = 3, stride = 2, context_width = 16, context_depth = 1 },
  { layer = "act_norm" },
  { layer = "leaky_relu" },
  { layer = "nsf_conv", channels = 4, couplings = 1, hidden = 4, classes = 2 },
  { layer = "split", depth = 1, hidden = 4 },
  { layer = "max_pool", kernel = 2, context_width = 16, context_depth = 1 },
  { layer = "avg_pool", kernel = 3, context_width = 16, context_depth = 1 },
  { layer = "spline" },
  { layer = "flatten" },
  { layer = "nsf", features = 8, couplings = 1, hidden = 8, classes = 2 },
  { layer = "linear", d_input = 8, d_output = 3 },
]"#;
    let spec = ModelSpec::parse(text, false).unwrap().resolved().unwrap();
    for tag in flowify::layers::LayerSpec::TAGS {
        assert!(
            text.contains(&format!("\"{tag}\"")),
            "{tag} is not in the spec"
        );
    }
    let dev = device(9).autodiff();
    let x = |seed: u64| {
        dev.seed(seed);
        Tensor::<4>::random([16, 1, 16, 16], Distribution::Uniform(0.0, 256.0), &dev).floor()
    };
    let labels: Vec<usize> = (0..16).map(|i| i % 2).collect();
    let given = flowify::model::one_hot(&labels, 2, &dev);
    let mut model = spec.init(&dev).unwrap().initialize(x(1), Some(&given));
    let mut optim = flowify::kernels::adam::FusedAdam::init();
    let mut snapshots = vec![named_parameters(&model)];
    for step in 0..2 {
        let batch = x(2 + step as u64);
        model =
            flowify::train::train_step(model, &mut optim, batch, Some(given.clone()), 1e-2, step).0;
        snapshots.push(named_parameters(&model));
    }
    // Two steps: behind a layer that starts at zero (a split's prior), the first step's
    // gradient is zero. (A narrow ReLU network can also start dead for every input, and then
    // never trains: the context networks are 16 wide, as 4 or 8 wide ones died for some draws.)
    for ((path, before), (_, after)) in snapshots[0].iter().zip(&snapshots[2]) {
        if !path.ends_with(".base") && !path.ends_with(".tangent") {
            assert!(before != after, "{path} did not move");
        }
    }
}
