//! Architecture files: the presets as shipped, what a spec's layers say about themselves against
//! the model they build, round trips through TOML and JSON, the error for each kind of bad spec,
//! and random specs, valid and not.

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Distribution, Tensor};
use common::*;
use flowify::data::Dataset;
use flowify::flow::Mode;
use flowify::model::trainable_params;
use flowify::presets::{self, NAMES};
use flowify::spec::ModelSpec;
use proptest::prelude::*;

/// Counted on the authors' PyTorch models; equal counts mean the same layers and sizes.
const REFERENCE: [(Dataset, &str, usize); 10] = [
    (Dataset::Mnist, "mlp", 5_496_529),
    (Dataset::Mnist, "conv1", 1_936_354),
    (Dataset::Mnist, "conv1_nsf", 3_065_270),
    (Dataset::Mnist, "conv2", 1_676_713),
    (Dataset::Mnist, "conv2_nsf", 2_714_197),
    (Dataset::Cifar10, "mlp", 81_866_612),
    (Dataset::Cifar10, "conv1", 12_084_712),
    (Dataset::Cifar10, "conv1_nsf", 12_428_462),
    (Dataset::Cifar10, "conv2", 9_420_455),
    (Dataset::Cifar10, "conv2_nsf", 10_163_315),
];

/// Each layer's own count, the spec's total and the built model's agree, and equal the
/// reference's, for all ten presets.
#[test]
fn presets_count_the_reference_parameters_before_and_after_building() {
    let dev = Device::flex();
    for (dataset, name, count) in REFERENCE {
        let spec = presets::spec(&dataset, name).unwrap();
        let what = format!("{}/{name}", dataset.name());
        assert_eq!(
            spec.params().unwrap(),
            count,
            "{what}: counted from the spec"
        );
        let model = spec.init(&dev).unwrap();
        assert_eq!(model.trainable_params(), count, "{what}: built");
        let inputs = spec.inputs().unwrap();
        for ((layer, built), input) in spec.layers.iter().zip(&model.layers).zip(inputs) {
            assert_eq!(
                layer.params(input),
                trainable_params(built),
                "{what}: {}",
                layer.name()
            );
        }
    }
}

#[test]
fn a_resolved_spec_survives_toml_and_json() {
    for dataset in [Dataset::Mnist, Dataset::Cifar10] {
        for name in NAMES {
            let spec = presets::spec(&dataset, name).unwrap();
            let toml = spec.to_toml();
            assert_eq!(
                ModelSpec::parse(&toml, false).unwrap(),
                spec,
                "{name}\n{toml}"
            );
            let json = serde_json::to_string(&spec).unwrap();
            assert_eq!(ModelSpec::parse(&json, true).unwrap(), spec, "{name}: JSON");
            assert_eq!(
                spec.resolved().unwrap(),
                spec,
                "{name}: resolving is idempotent"
            );
        }
    }
}

/// `fast` is conv2_nsf's network with a recipe of its own, for each image dataset: the same
/// layers, and so the same parameters, trained at a higher peak learning rate.
#[test]
fn the_fast_preset_is_conv2_nsf_with_its_own_recipe() {
    for (dataset, params, lr) in [
        (Dataset::Mnist, 2_714_197, 4e-3),
        (Dataset::Cifar10, 10_163_315, 1e-3),
    ] {
        let fast = presets::spec(&dataset, "fast").unwrap();
        let conv2_nsf = presets::spec(&dataset, "conv2_nsf").unwrap();
        assert_eq!(fast.layers, conv2_nsf.layers, "{}", dataset.name());
        assert_eq!(fast.params().unwrap(), params, "{}", dataset.name());
        assert_eq!(fast.train.lr, Some(lr), "{}", dataset.name());
        assert_eq!(
            conv2_nsf.train.lr,
            None,
            "{}: the paper's presets keep the paper's rate",
            dataset.name()
        );
    }
}

/// An architecture's training recipe is read, printed and written with it.
#[test]
fn a_recipe_survives_toml_and_json() {
    let text = "input = [4]\ntrain = { lr = 0.002 }\nlayers = [{ layer = \"spline\" }]";
    let spec = ModelSpec::parse(text, false).unwrap();
    assert_eq!(spec.train.lr, Some(0.002));
    let toml = spec.to_toml();
    assert!(toml.contains("train = { lr = 2e-3 }"), "{toml}");
    assert_eq!(ModelSpec::parse(&toml, false).unwrap(), spec, "{toml}");
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(ModelSpec::parse(&json, true).unwrap(), spec, "{json}");
    assert_eq!(spec.resolved().unwrap(), spec);
    let none = ModelSpec::parse("input = [4]\nlayers = []", false).unwrap();
    assert!(!serde_json::to_string(&none).unwrap().contains("train"));
}

/// The spec files shipped as examples read, resolve and count their parameters right.
#[test]
fn the_example_specs_build() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let spec = ModelSpec::read(&path).unwrap();
            let built = spec.init(&Device::flex()).unwrap().trainable_params();
            assert_eq!(spec.params().unwrap(), built, "{}", path.display());
            seen += 1;
        }
    }
    assert!(seen > 0, "no example specs");
}

/// Every field a layer uses changes the model it builds.
#[test]
fn hyperparameters_reach_the_layers() {
    let base = r#"input = [2, 4, 4]
layers = [
  { layer = "conv", c_in = 2, c_out = 4, kernel = 2, stride = 2 },
  { layer = "nsf_conv", channels = 4, couplings = 1 },
  { layer = "flatten" },
  { layer = "nsf", features = 16, couplings = 1 },
  { layer = "linear", d_input = 16, d_output = 6 },
  { layer = "spline" },
]"#;
    let count = |text: &str| ModelSpec::parse(text, false).unwrap().params().unwrap();
    let reference = count(base);
    for (from, to) in [
        ("stride = 2 }", "stride = 2, context_width = 9 }"),
        ("stride = 2 }", "stride = 2, context_depth = 2 }"),
        ("stride = 2 }", "stride = 2, context_convs = 1 }"),
        (
            "couplings = 1 },\n  { layer = \"flatten\"",
            "couplings = 1, hidden = 8 },\n  { layer = \"flatten\"",
        ),
        ("channels = 4, couplings = 1", "channels = 4, couplings = 2"),
        (
            "channels = 4, couplings = 1",
            "channels = 4, couplings = 1, depth = 1",
        ),
        (
            "channels = 4, couplings = 1",
            "channels = 4, couplings = 1, bins = 8",
        ),
        (
            "features = 16, couplings = 1",
            "features = 16, couplings = 1, hidden = 64",
        ),
        (
            "features = 16, couplings = 1",
            "features = 16, couplings = 1, depth = 1",
        ),
        ("d_output = 6 }", "d_output = 6, conditioner = [32] }"),
        ("{ layer = \"spline\" }", "{ layer = \"spline\", bins = 4 }"),
    ] {
        assert!(base.contains(from), "{from}");
        let changed = base.replacen(from, to, 1);
        let spec = ModelSpec::parse(&changed, false).unwrap();
        let built = spec.init(&Device::flex()).unwrap().trainable_params();
        assert_eq!(spec.params().unwrap(), built, "{to}");
        assert_ne!(built, reference, "{to} changes nothing");
    }
    // The bounds change no count, but the function: the spline is the identity beyond them.
    let dev = device(3);
    let x = Tensor::<4>::full([1, 1, 1, 1], 2.5, &dev);
    for (bound, identity) in [(2.0, true), (3.0, false)] {
        let text = format!("input = [1]\nlayers = [{{ layer = \"spline\", bound = {bound:.1} }}]");
        let model = ModelSpec::parse(&text, false).unwrap().init(&dev).unwrap();
        let (z, _) = model.forward(x.clone(), Mode::Mean);
        let z = values(z)[0];
        assert_eq!(
            (z - 2.5).abs() < 1e-6,
            identity,
            "bound {bound}: S(2.5) = {z}"
        );
    }
}

/// One line each, naming the layer (index and kind), the field and what was expected.
#[test]
fn bad_specs_are_refused_with_the_layer_and_field() {
    let conv_chain = r#"input = [1, 28, 28]
layers = [
  { layer = "dequantize" },
  { layer = "conv", c_in = 1, c_out = 4, kernel = 2, stride = 2 },
  { layer = "spline" },
  { layer = "conv", c_in = 4, c_out = 16, kernel = 2, stride = 2 },
  { layer = "conv", c_in = 16, c_out = 32, kernel = 2, stride = 2 },
  { layer = "conv", c_in = 16, c_out = 32, kernel = 2, stride = 2 },
]"#;
    let cases: &[(&str, &[&str])] = &[
        (
            conv_chain,
            &["layer 5 (conv), Conv(16→32, k2, s2): expects 16 channels, got 32×4×4"],
        ),
        (
            "input = [1, 8, 8]\nlayers = [{ layer = \"convolution\" }]",
            &["layer 0 (convolution): layer: unknown kind \"convolution\"; expected one of dequantize, flatten"],
        ),
        (
            "input = [4]\nlayers = [{ layer = \"spline\", bnis = 3 }]",
            &["layer 0 (spline): unknown field `bnis`, expected `bins` or `bound`"],
        ),
        (
            "input = [4]\nlayers = [{ layer = \"spline\", bins = \"many\" }]",
            &["layer 0 (spline): bins: invalid type: string \"many\", expected usize"],
        ),
        (
            "input = [4]\nlayers = [{ layer = \"linear\", d_input = 4 }]",
            &["layer 0 (linear): missing field `d_output`"],
        ),
        (
            "input = [1, 8, 8]\nlayers = [{ layer = \"conv\", c_in = 1, c_out = 2, kernel = 2, stride = 3 }]",
            &["layer 0 (conv), Conv(1→2, k2, s3): stride: expected at most the kernel (2)", "got 3"],
        ),
        (
            "input = [1]\nlayers = [{ layer = \"nsf\", features = 1, couplings = 2 }]",
            &["layer 0 (nsf), RQ_NSF(1,2): features: expected at least 2, got 1"],
        ),
        (
            "input = [1, 8, 8]\nlayers = [{ layer = \"linear\", d_input = 64, d_output = 8 }]",
            &["layer 0 (linear), Lin(64,8): expects a flat input of 64 features, got 1×8×8 (add a flatten layer first)"],
        ),
        (
            "input = [8]\nlayers = [{ layer = \"linear\", d_input = 8, d_output = 8, conditioner = [16] }]",
            &["layer 0 (linear), Lin(8,8): conditioner: only a funnel (d_input > d_output) has one"],
        ),
        (
            "input = [8]\nlayers = [{ layer = \"leaky_relu\", slope = -1.0 }]",
            &["slope: expected a finite number > 0, got -1"],
        ),
        (
            "input = [1, 28]\nlayers = []",
            &["input: expected [C, H, W] or [D] of positive integers, got [1,28]"],
        ),
        ("layers = []", &["input: missing"]),
        ("input = [3]\nlayer = []", &["unknown field `layer`, expected `input`, `layers`, `classes` or `train`"]),
        ("input = [3]\ntrain = { lr = 0 }\nlayers = []", &["train.lr: expected a learning rate in (0, 1], got 0"]),
        ("input = [3]\ntrain = { lr = \"fast\" }\nlayers = []", &["train.lr: invalid type: string \"fast\""]),
        ("input = [3]\ntrain = { batch = 64 }\nlayers = []", &["train.batch: unknown field `batch`, expected `lr`"]),
        ("input = [3\nlayers = []", &["line 2: missing comma"]),
    ];
    for (text, expected) in cases {
        let err = ModelSpec::parse(text, false)
            .and_then(|s| s.resolved())
            .expect_err(text);
        assert!(!err.contains('\n'), "one line: {err}");
        for part in *expected {
            assert!(err.contains(part), "{text}\n→ {err}\nwanted: {part}");
        }
    }
}

/// Every rotation in a model is retracted after each training step, however deep it sits: its
/// tangent is zero again, its base point has moved, and it keeps training at the next step (its
/// tangent is still the leaf the gradient reaches).
#[test]
fn every_rotation_is_retracted_and_keeps_training() {
    let dev = device(5).autodiff();
    let spec = presets::spec(&Dataset::Mnist, "conv2").unwrap();
    let mut model = spec.init(&dev).unwrap();
    let mut optim = flowify::kernels::adam::FusedAdam::init();
    let mut bases = vec![Bases::of(&model)];
    for step in 0..2 {
        let x =
            Tensor::<4>::random([4, 1, 28, 28], Distribution::Uniform(0.0, 256.0), &dev).floor();
        model = flowify::train::train_step(model, &mut optim, x, None, 1e-3, step).0;
        bases.push(Bases::of(&model));
    }
    let rotations = bases[0].bases.len();
    assert!(rotations >= 2 * 17, "{rotations} rotations");
    for (step, pair) in bases.windows(2).enumerate() {
        let (before, after) = (&pair[0], &pair[1]);
        assert_eq!(after.bases.len(), rotations);
        assert!(
            after.tangent_sum == 0.0,
            "step {step}: tangents left: {}",
            after.tangent_sum
        );
        for (i, (b, a)) in before.bases.iter().zip(&after.bases).enumerate() {
            assert!(b != a, "step {step}: rotation {i} did not move");
        }
    }
}

#[derive(Default)]
struct Bases {
    path: Vec<String>,
    bases: Vec<Vec<f32>>,
    tangent_sum: f64,
}

impl Bases {
    fn of(model: &impl Module) -> Self {
        let mut found = Self::default();
        model.visit(&mut found);
        found
    }
}

impl ModuleVisitor for Bases {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.into());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        match self.path.last().map(String::as_str) {
            Some("base") => self.bases.push(values(param.val())),
            Some("tangent") => {
                self.tangent_sum += values(param.val())
                    .iter()
                    .map(|v| v.abs() as f64)
                    .sum::<f64>()
            }
            _ => {}
        }
    }
}

/// A random chain of layers that fits together, on a small image, written as TOML.
fn valid_spec() -> impl Strategy<Value = String> {
    let layer = prop_oneof![
        (1usize..4, 1usize..3, 1usize..3, 1usize..3)
            .prop_map(|(c, k, t, n)| (0, [c, k, t.min(k), n])),
        (0usize..2, 2usize..4, 1usize..3, 0usize..2).prop_map(|(a, b, n, d)| (1, [a, b, n, d])),
        (1usize..12, 0usize..2).prop_map(|(d, s)| (2, [d, s, 0, 0])),
        (2usize..6, 1usize..3).prop_map(|(b, n)| (3, [b, n, 0, 0])),
    ];
    (1usize..3, 3usize..7, proptest::collection::vec(layer, 1..7)).prop_map(|(c0, size, layers)| {
        let mut shape = [c0, size, size];
        let mut lines = vec!["{ layer = \"dequantize\" }".to_string()];
        for (kind, [a, b, c, d]) in layers {
            let flat = shape[1] == 1 && shape[2] == 1;
            match kind {
                0 if !flat && shape[1] >= b => {
                    let (c_out, k, t) = (a * shape[0] + d, b, c);
                    lines.push(format!(
                        "{{ layer = \"conv\", c_in = {}, c_out = {c_out}, kernel = {k}, stride = {t}, context_width = 5, context_depth = 1 }}",
                        shape[0]
                    ));
                    let pad = |s: usize| s + (t - (s - k) % t) % t;
                    shape = [c_out, (pad(shape[1]) - k) / t + 1, (pad(shape[2]) - k) / t + 1];
                }
                1 if shape[0] >= 2 => lines.push(if flat {
                    format!("{{ layer = \"nsf\", features = {}, couplings = {c}, hidden = 8, depth = {d}, bins = {b} }}", shape[0])
                } else {
                    format!("{{ layer = \"nsf_conv\", channels = {}, couplings = {c}, hidden = 4, depth = {d}, bins = {b} }}", shape[0])
                }),
                2 => {
                    if !flat {
                        lines.push("{ layer = \"flatten\" }".into());
                        shape = [shape[0] * shape[1] * shape[2], 1, 1];
                    }
                    lines.push(format!(
                        "{{ layer = \"linear\", d_input = {}, d_output = {a} }}",
                        shape[0]
                    ));
                    shape = [a, 1, 1];
                    lines.push(if b == 0 { "{ layer = \"spline\" }".into() } else { "{ layer = \"leaky_relu\", slope = 0.3 }".into() });
                }
                _ => lines.push(format!("{{ layer = \"spline\", bins = {}, bound = {b}.0 }}", a + 2)),
            }
        }
        format!("input = [{c0}, {size}, {size}]\nlayers = [\n  {}\n]\n", lines.join(",\n  "))
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Valid specs build, count their parameters right, and run forward and back to the input's
    /// shape with finite values.
    #[test]
    fn random_valid_specs_build_and_run(text in valid_spec()) {
        let spec = ModelSpec::parse(&text, false).and_then(|s| s.resolved());
        prop_assert!(spec.is_ok(), "{text}\n{spec:?}");
        let spec = spec.unwrap();
        let dev = device(7);
        let model = spec.init(&dev).unwrap();
        prop_assert_eq!(model.trainable_params(), spec.params().unwrap());
        let [c, h, w] = spec.input;
        let x = Tensor::<4>::random([3, c, h, w], Distribution::Uniform(0.0, 256.0), &dev).floor();
        let (z, v) = model.forward(x, Mode::Sample);
        prop_assert!(values(v).iter().all(|v| v.is_finite()), "{}", text);
        let back = values(model.inverse(z, Mode::Sample));
        prop_assert_eq!(back.len(), 3 * c * h * w);
        prop_assert!(back.iter().all(|v| v.is_finite()), "{}", text);
    }

    /// Specs spoiled at random (a number changed, a field renamed, a line dropped or repeated)
    /// either still describe a model that builds, or are refused with one line, never a panic.
    #[test]
    fn spoiled_specs_are_refused_without_a_panic(
        text in valid_spec(),
        at in 0usize..1000,
        how in 0usize..4,
        number in 0usize..40,
    ) {
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        let i = 2 + at % (lines.len() - 3);
        match how {
            0 => lines[i] = lines[i].replacen(|ch: char| ch.is_ascii_digit(), &number.to_string(), 1),
            1 => lines[i] = lines[i].replacen("layer = \"", "layer = \"x", 1),
            2 => { lines.remove(i); }
            _ => lines.insert(i, lines[i].clone()),
        }
        let spoiled = lines.join("\n");
        let outcome = std::panic::catch_unwind(|| {
            ModelSpec::parse(&spoiled, false).and_then(|s| s.resolved()).map(|s| {
                s.init(&Device::flex()).unwrap().trainable_params() == s.params().unwrap()
            })
        });
        prop_assert!(outcome.is_ok(), "panicked on\n{}", spoiled);
        match outcome.unwrap() {
            Ok(counted_right) => prop_assert!(counted_right, "{}", spoiled),
            Err(e) => prop_assert!(!e.is_empty() && !e.contains('\n'), "{}", e),
        }
    }
}
