//! The CPU kernels against burn's own ops: same values, same gradients.

mod common;

use burn::nn::conv::Conv2dConfig;
use burn::nn::PaddingConfig2d;
use burn::tensor::{Distribution, Tensor};
use common::{assert_close, device, values};
use flowify::kernels::conv3x3::conv3x3_rows;

/// `[batch, C, H, W] → [batch·H·W, C]`.
fn rows(x: Tensor<4>) -> Tensor<2> {
    let [b, c, h, w] = x.dims();
    x.permute([0, 2, 3, 1]).reshape([b * h * w, c])
}

#[test]
fn conv3x3_rows_matches_conv2d_in_values_and_gradients() {
    // Odd sizes, a non-square map and a batch above one catch row/column and image mix-ups; 300
    // input channels split the rows into blocks of 97, so a block ends inside an image.
    for (batch, c_in, c_out, h, w) in [(3, 5, 4, 4, 6), (2, 300, 3, 7, 9)] {
        check_conv3x3(batch, c_in, c_out, h, w);
    }
}

fn check_conv3x3(batch: usize, c_in: usize, c_out: usize, h: usize, w: usize) {
    let dev = device(11);
    let conv = Conv2dConfig::new([c_in, c_out], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&dev);
    let x = Tensor::<4>::random([batch, c_in, h, w], Distribution::Normal(0.0, 1.0), &dev)
        .require_grad();
    // A weighting of the outputs, so every gradient entry differs.
    let weights = Tensor::<4>::random([batch, c_out, h, w], Distribution::Normal(0.0, 1.0), &dev);

    let reference = conv.forward(x.clone());
    let ours = conv3x3_rows(&conv, rows(x.clone()), [h, w]);
    assert_close(
        &values(ours.clone()),
        &values(rows(reference.clone())),
        1e-5,
        "output",
    );

    let grads_ref = (reference * weights.clone()).sum().backward();
    let grads_ours = (ours * rows(weights)).sum().backward();
    let pairs = [
        (x.grad(&grads_ours).unwrap(), x.grad(&grads_ref).unwrap()),
        (
            conv.weight.val().grad(&grads_ours).unwrap(),
            conv.weight.val().grad(&grads_ref).unwrap(),
        ),
    ];
    for ((ours, reference), what) in pairs.into_iter().zip(["input grad", "weight grad"]) {
        assert_close(&values(ours), &values(reference), 1e-4, what);
    }
    let bias = conv.bias.as_ref().unwrap().val();
    assert_close(
        &values(bias.grad(&grads_ours).unwrap()),
        &values(bias.grad(&grads_ref).unwrap()),
        1e-4,
        "bias grad",
    );
}
