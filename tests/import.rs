//! Importing a trained network (docs/method.md §2.12): networks written with burn's own layers,
//! random weights, saved to safetensors, read back and flowified; in mean mode the flow computes
//! what the network computes, for dense funnels, bijections and augmentations, convolutions that
//! drop and that add dimensions, and a BatchNorm folded into an ActNorm. Weights the method
//! cannot take are refused with the layer named.

mod common;

use burn::module::{Module, Param, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::activation::leaky_relu;
use burn::tensor::{Device, Distribution, Tensor};
use common::*;
use flowify::flow::Mode;
use flowify::import::{import, sequential_spec};
use flowify::layers::trained::{Layout, Trained};

/// One layer of a sequential network, as burn stores it (`layers.N.<Variant>.weight`).
#[derive(Module, Debug)]
enum Part {
    Dense(Linear),
    Conv(Conv2d),
    Norm(BatchNorm),
}

#[derive(Module, Debug)]
struct Net {
    layers: Vec<Part>,
}

const SLOPE: f64 = 0.2;

impl Net {
    /// The plain network: a LeakyReLU before every dense layer or convolution but the first,
    /// flattening before the first dense layer.
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut h = x;
        let mut flat: Option<Tensor<2>> = None;
        let mut weighted = 0;
        for part in &self.layers {
            let activate = |t| {
                if weighted > 0 {
                    leaky_relu(t, SLOPE)
                } else {
                    t
                }
            };
            match part {
                Part::Conv(conv) => {
                    h = conv.forward(activate(h));
                    weighted += 1;
                }
                Part::Dense(linear) => {
                    let input = flat.take().unwrap_or_else(|| {
                        let [b, c, hh, ww] = h.dims();
                        h.clone().reshape([b, c * hh * ww])
                    });
                    flat = Some(linear.forward(activate_2(input, weighted > 0)));
                    weighted += 1;
                }
                Part::Norm(norm) => match flat.take() {
                    Some(v) => flat = Some(norm.forward(v)),
                    None => h = norm.forward(h),
                },
            }
        }
        flat.unwrap_or_else(|| {
            let [b, c, hh, ww] = h.dims();
            h.reshape([b, c * hh * ww])
        })
    }
}

fn activate_2(t: Tensor<2>, on: bool) -> Tensor<2> {
    if on {
        leaky_relu(t, SLOPE)
    } else {
        t
    }
}

fn dense(d_in: usize, d_out: usize, dev: &Device) -> Part {
    Part::Dense(LinearConfig::new(d_in, d_out).init(dev))
}

fn conv(c_in: usize, c_out: usize, k: usize, dev: &Device) -> Part {
    Part::Conv(Conv2dConfig::new([c_in, c_out], [k, k]).init(dev))
}

/// A BatchNorm with running statistics and an affine part away from their initial values.
fn norm(c: usize, dev: &Device) -> Part {
    let mut bn = BatchNormConfig::new(c).init(dev);
    let draw = |lo: f64, hi: f64| Tensor::<1>::random([c], Distribution::Uniform(lo, hi), dev);
    bn.gamma = Param::from_tensor(draw(0.5, 2.0));
    bn.beta = Param::from_tensor(draw(-1.0, 1.0));
    bn.running_mean = RunningState::new(draw(-0.5, 0.5));
    bn.running_var = RunningState::new(draw(0.2, 3.0));
    Part::Norm(bn)
}

/// `net` saved to a safetensors file of its own and read back.
fn saved(net: &Net) -> Trained {
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("flowify-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("net-{n}.safetensors"));
    net.save_into(&mut SafetensorsStore::from_file(&path).overwrite(true))
        .unwrap();
    Trained::read(&path, Layout::Burn).unwrap()
}

/// Saves `net`, imports it as a sequential network on `[c, h, w]` pixels, and returns the
/// largest deviation of the flow's mean mode from the network, relative to the largest output.
fn deviation(net: &Net, shape: [usize; 3], dev: &Device) -> f32 {
    let trained = saved(net);
    let spec = sequential_spec(&trained, shape, SLOPE).unwrap();
    let model = import(&spec, &trained, dev).unwrap();

    let [c, h, w] = shape;
    let pixels = Tensor::<4>::random([5, c, h, w], Distribution::Uniform(0.0, 256.0), dev).floor();
    let (z, _) = model.forward(pixels.clone(), Mode::Mean);
    let expected = values(net.forward(pixels.add_scalar(0.5).div_scalar(256.0)));
    let got = values(z);
    assert_eq!(got.len(), expected.len(), "output widths");
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(&expected)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

#[test]
fn an_imported_network_in_mean_mode_is_the_network() {
    let dev = Device::flex();
    dev.seed(5);
    // Dense: a funnel 36 → 20 with a BatchNorm after it, a bijection 20 → 20, an augmentation
    // 20 → 30 and a funnel 30 → 5 (a classifier's logits).
    let dense_net = Net {
        layers: vec![
            dense(36, 20, &dev),
            norm(20, &dev),
            dense(20, 20, &dev),
            dense(20, 30, &dev),
            dense(30, 5, &dev),
        ],
    };
    let d = deviation(&dense_net, [1, 6, 6], &dev);
    eprintln!("dense network: largest mean-mode deviation {d:.2e} (relative)");
    assert!(d < 1e-4, "dense network: mean mode deviates by {d:e}");

    // Convolutions: 1 → 12 channels with a 3×3 kernel adds dimensions (9 → 12), 12 → 6 with a
    // 2×2 kernel drops them (48 → 6), a BatchNorm on the image between, then a dense layer.
    let conv_net = Net {
        layers: vec![
            conv(1, 12, 3, &dev),
            norm(12, &dev),
            conv(12, 6, 2, &dev),
            dense(54, 10, &dev),
        ],
    };
    let d = deviation(&conv_net, [1, 6, 6], &dev);
    eprintln!("convolutional network: largest mean-mode deviation {d:.2e} (relative)");
    assert!(
        d < 1e-4,
        "convolutional network: mean mode deviates by {d:e}"
    );
}

/// PyTorch's layout (`[out, in]`, names `0.weight`) reads the same network as burn's.
#[test]
fn torch_and_burn_layouts_read_the_same_dense_layer() {
    let dev = Device::flex();
    dev.seed(6);
    let weight: Vec<f64> = (0..12).map(|i| (i as f64 * 0.37).sin()).collect();
    let burn_file = Trained {
        tensors: [(
            "layers.0.weight".to_string(),
            flowify::layers::trained::HostTensor {
                shape: vec![3, 4],
                values: weight.clone(),
            },
        )]
        .into(),
        layout: Layout::Burn,
    };
    let transposed: Vec<f64> = (0..12).map(|i| weight[(i % 3) * 4 + i / 3]).collect();
    let torch_file = Trained {
        tensors: [(
            "0.weight".to_string(),
            flowify::layers::trained::HostTensor {
                shape: vec![4, 3],
                values: transposed,
            },
        )]
        .into(),
        layout: Layout::Torch,
    };
    let a = burn_file.dense("layers.0").unwrap();
    let b = torch_file.dense("0").unwrap();
    assert_eq!((a.d_output, a.d_input), (4, 3));
    assert_eq!((b.d_output, b.d_input), (4, 3));
    assert_eq!(a.weight, b.weight);
    // Row `o` of `W` is what burn stores in column `o`.
    assert_eq!(a.weight[3 + 2], weight[2 * 4 + 1]);
}

/// What cannot be flowified is refused with one line naming the layer.
#[test]
fn weights_the_method_cannot_take_are_refused() {
    let dev = Device::flex();
    dev.seed(7);
    let refused = |net: Net, shape: [usize; 3]| -> String {
        let trained = saved(&net);
        let outcome = sequential_spec(&trained, shape, SLOPE)
            .and_then(|spec| import(&spec, &trained, &dev).map(|_| ()));
        let message = outcome.expect_err("refused");
        assert!(!message.contains('\n'), "{message}");
        message
    };
    // A rank-deficient weight: two equal rows.
    let mut low_rank = LinearConfig::new(4, 2).init(&dev);
    low_rank.weight = Param::from_tensor(Tensor::<2>::ones([4, 2], &dev));
    let message = refused(
        Net {
            layers: vec![Part::Dense(low_rank)],
        },
        [4, 1, 1],
    );
    assert!(
        message.contains("layer 1 (linear)") && message.contains("rank"),
        "{message}"
    );
    // A dense layer whose width is not the image's.
    let message = refused(
        Net {
            layers: vec![dense(10, 3, &dev)],
        },
        [1, 6, 6],
    );
    assert!(
        message.contains("layer 2 (linear)") && message.contains("36"),
        "{message}"
    );
    // A normalization with a negative scale.
    let Part::Norm(mut bn) = norm(3, &dev) else {
        unreachable!()
    };
    bn.gamma = Param::from_tensor(Tensor::<1>::from_floats([1.0, -1.0, 1.0], &dev));
    let message = refused(
        Net {
            layers: vec![dense(3, 3, &dev), Part::Norm(bn)],
        },
        [3, 1, 1],
    );
    assert!(
        message.contains("layer 2 (act_norm)") && message.contains("channel 1"),
        "{message}"
    );
}
