//! Bringing in a trained network (docs/method.md §2.12): the flowified layers' parameters are
//! set from its weights so that the flow's mean-mode forward pass is the network's forward pass.
//! Each layer sets its own (`LayerConfig::import`); this module reads a whole network, builds
//! the chain of a sequential one, and hands each entry its tensors.

use burn::tensor::Device;

use crate::layers::act_norm::ActNormSpec;
use crate::layers::activation::LeakyReluSpec;
use crate::layers::conv::ConvSpec;
use crate::layers::dense::LinearSpec;
use crate::layers::dequantize::DequantizeSpec;
use crate::layers::reshape::FlattenSpec;
use crate::layers::trained::Trained;
use crate::layers::LayerSpec;
use crate::model::FlowModel;
use crate::spec::ModelSpec;

/// The flow of a sequential network whose tensors are `trained` (PyTorch's `nn.Sequential`
/// names, `0.weight`, `2.weight`, …, or burn's `layers.0.weight`, …, taken in order) on inputs
/// of shape `input`: dequantization first (the network reads pixels as `(k + ½)/256`), then per
/// tensor prefix
/// - a 2-D weight: a dense layer (after a `flatten` where the input is still an image);
/// - a 4-D weight: a convolution at stride 1, PyTorch's and burn's default;
/// - a 1-D weight: a normalization (a BatchNorm, its statistics folded in), as an ActNorm;
///
/// with a LeakyReLU of `slope` before every dense layer or convolution but the first, and none
/// after the last (a classifier's logits). The spec is checked whole: a weight that does not fit
/// the shape before it is refused with the layer it is in.
pub fn sequential_spec(
    trained: &Trained,
    input: [usize; 3],
    slope: f64,
) -> Result<ModelSpec, String> {
    let mut layers: Vec<LayerSpec> = vec![DequantizeSpec::default().into()];
    let mut shape = input;
    let mut weighted = 0;
    for prefix in trained.prefixes() {
        let dims = trained
            .find(&prefix, &["weight", "gamma"])
            .map(|t| t.shape.len())
            .unwrap_or_default();
        let entry: LayerSpec = match dims {
            1 => ActNormSpec {
                weights: Some(prefix.clone()),
            }
            .into(),
            2 | 4 => {
                if weighted > 0 {
                    layers.push(LeakyReluSpec { slope }.into());
                }
                weighted += 1;
                if dims == 2 {
                    if shape[1] * shape[2] > 1 {
                        layers.push(FlattenSpec {}.into());
                        shape = [shape.iter().product(), 1, 1];
                    }
                    let dense = trained.dense(&prefix)?;
                    LinearSpec {
                        weights: Some(prefix.clone()),
                        ..LinearSpec::new(dense.d_input, dense.d_output)
                    }
                    .into()
                } else {
                    let (dense, k) = trained.conv(&prefix)?;
                    ConvSpec {
                        weights: Some(prefix.clone()),
                        ..ConvSpec::new(dense.d_input / (k * k), dense.d_output, k, 1)
                    }
                    .into()
                }
            }
            _ => {
                return Err(format!(
                    "{prefix}.weight: expected 1 (normalization), 2 (dense) or 4 (convolution) \
                     dimensions, got {dims}"
                ))
            }
        };
        let index = layers.len();
        shape = entry
            .output_shape(shape)
            .map_err(|e| format!("layer {index} ({}), {}: {e}", entry.tag(), entry.name()))?;
        layers.push(entry);
    }
    if weighted == 0 {
        return Err("holds no dense or convolution weights".into());
    }
    ModelSpec {
        input,
        layers,
        classes: None,
        train: Default::default(),
    }
    .resolved()
}

/// The model of `spec` with every entry that names its tensors (`weights = "prefix"`) set from
/// `trained`, on `device`; entries that name none keep their initialization.
pub fn import(spec: &ModelSpec, trained: &Trained, device: &Device) -> Result<FlowModel, String> {
    let inputs = spec.inputs()?;
    let model = spec.init(device)?;
    let layers = spec
        .layers
        .iter()
        .zip(inputs)
        .zip(model.layers)
        .enumerate()
        .map(|(i, ((entry, input), layer))| {
            entry
                .import(input, layer, trained)
                .map_err(|e| format!("layer {i} ({}): {e}", entry.tag()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(FlowModel { layers, ..model })
}
