//! `flowify info`: an architecture's layers with output shapes, kinds and parameter counts, all
//! read from the spec, without building the model.

use crate::layers::shape_text;
use crate::spec::ModelSpec;

/// A table of `spec`'s layers, one line each, and the total.
pub fn describe(spec: &ModelSpec) -> Result<String, String> {
    let outputs = spec.shapes()?;
    let inputs = spec.inputs()?;
    let mut out = format!(
        "{:>3}  {:<22} {:<14} {:<13} {:>11}\n",
        "#", "layer", "output", "kind", "params"
    );
    out += &format!("{:>3}  {:<22} {:<14}\n", "", "input", spec.input_text());
    for (i, ((layer, input), output)) in spec.layers.iter().zip(inputs).zip(outputs).enumerate() {
        out += &format!(
            "{:>3}  {:<22} {:<14} {:<13} {:>11}\n",
            i,
            layer.name(),
            shape_text(output),
            layer.kind(input).to_string(),
            group_thousands(layer.params(input))
        );
    }
    out += &format!(
        "total trainable parameters: {}\n",
        group_thousands(spec.params()?)
    );
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
