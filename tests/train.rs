//! The training step's loss and gradients, worked out on two halves of the batch at once.

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Distribution, Tensor};
use common::{device, values};
use flowify::data::Dataset;
use flowify::flow::Mode;
use flowify::model::one_hot;
use flowify::presets::spec;
use flowify::train::loss_and_gradients;

/// Compares every parameter's gradient in two sets.
struct SameGradients<'a> {
    ours: &'a GradientsParams,
    reference: &'a GradientsParams,
    compared: usize,
}

impl ModuleVisitor for SameGradients<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let reference = self.reference.get::<D>(param.id);
        let ours = self.ours.get::<D>(param.id);
        assert_eq!(
            ours.is_some(),
            reference.is_some(),
            "parameter {}: a gradient on one side only",
            param.id
        );
        let (Some(ours), Some(reference)) = (ours, reference) else {
            return;
        };
        let (ours, reference) = (values(ours), values(reference));
        let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
        for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
            assert!(
                (a - b).abs() <= 2e-4 * scale,
                "parameter {}, element {i}: {a} vs {b} (largest {scale})",
                param.id
            );
        }
        self.compared += 1;
    }
}

#[test]
fn halves_of_a_batch_give_the_whole_batch_loss_and_gradients_and_follow_the_seed() {
    // Mean mode draws nothing, so the split must reproduce the whole batch's figures; an odd
    // batch splits 2 + 1, so each half must be weighted by its size. A class-conditional model's
    // classes split with the batch.
    for (arch, batch, conditional) in [
        ("conv2", 3, false),
        ("conv1_nsf", 4, false),
        ("mlp", 1, false),
        ("conv2_nsf", 5, true),
    ] {
        let dev = device(11);
        let mut arch_spec = spec(&Dataset::Mnist, arch).unwrap();
        if conditional {
            arch_spec = arch_spec.conditional(10).unwrap();
        }
        let model = arch_spec.init(&dev).unwrap();
        let x = Tensor::<4>::random([batch, 1, 28, 28], Distribution::Uniform(0.0, 256.0), &dev)
            .floor();
        let labels: Vec<usize> = (0..batch).map(|i| 3 * i % 10).collect();
        let classes = conditional.then(|| one_hot(&labels, 10, &dev));
        let (loss, ours) = loss_and_gradients(&model, x.clone(), classes.clone(), Mode::Mean);
        let whole = match &classes {
            Some(classes) => model.log_likelihood_given(x, classes, Mode::Mean),
            None => model.log_likelihood(x, Mode::Mean),
        };
        let whole = whole.mean().neg();
        let expected = values(whole.clone())[0] as f64;
        assert!(
            (loss - expected).abs() <= 1e-5 * expected.abs(),
            "{arch:?}: loss {loss} vs {expected}"
        );
        let reference = GradientsParams::from_grads(whole.backward(), &model);
        let mut check = SameGradients {
            ours: &ours,
            reference: &reference,
            compared: 0,
        };
        model.visit(&mut check);
        assert!(
            check.compared > 10,
            "{arch:?}: {} gradients",
            check.compared
        );
    }

    // In sample mode each half draws its own noise, from seeds taken from the device's
    // generator before the split: the step still follows the seed to the bit. (One test: the
    // generator is shared by the tests of a binary running at once.)
    let dev = device(12);
    let model = spec(&Dataset::Mnist, "conv2").unwrap().init(&dev).unwrap();
    let x = Tensor::<4>::random([6, 1, 28, 28], Distribution::Uniform(0.0, 256.0), &dev).floor();
    let step = |seed| {
        dev.seed(seed);
        loss_and_gradients(&model, x.clone(), None, Mode::Sample).0
    };
    let (a, b, c) = (step(5), step(5), step(6));
    assert_eq!(a, b, "same seed, same loss to the bit");
    assert_ne!(a, c, "another seed draws other noise");
}
