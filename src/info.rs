//! `flowify info`: an architecture's layers with output shapes, kinds and parameter counts.

use burn::tensor::Device;

use crate::model::{trainable_params, ModelSpec};

/// A table of `spec`'s layers, one line each, and the total.
pub fn describe(spec: &ModelSpec, device: &Device) -> Result<String, String> {
    let shapes = spec.shapes()?;
    let model = spec.init(device)?;
    let [c, h, w] = spec.input;
    let mut out = format!(
        "{:>3}  {:<22} {:<14} {:<13} {:>11}\n",
        "#", "layer", "output", "kind", "params"
    );
    out += &format!(
        "{:>3}  {:<22} {:<14}\n",
        "",
        "input",
        format!("{c}×{h}×{w}")
    );
    let mut total = 0;
    for (i, ((layer_spec, layer), [c, h, w])) in spec
        .layers
        .iter()
        .zip(&model.layers)
        .zip(shapes)
        .enumerate()
    {
        let params = trainable_params(layer);
        total += params;
        out += &format!(
            "{:>3}  {:<22} {:<14} {:<13} {:>11}\n",
            i,
            layer_spec.name(),
            format!("{c}×{h}×{w}"),
            layer.kind().to_string(),
            group_thousands(params)
        );
    }
    out += &format!("total trainable parameters: {}\n", group_thousands(total));
    Ok(out)
}

fn group_thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
