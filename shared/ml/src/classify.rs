//! Classification and ranking on the embedder's sentence vectors. A label is
//! a prototype: the normalized mean of the vectors of its name, description
//! and examples. A text's label probabilities are a softmax over its cosine
//! to each prototype, so few-shot labels need no training step.

use crate::normalize;

/// Cosine of two normalized vectors.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The normalized mean of normalized vectors.
pub fn prototype(vectors: &[&[f32]]) -> Vec<f32> {
    let mut sum = vec![0f32; vectors.first().map_or(0, |v| v.len())];
    for v in vectors {
        sum.iter_mut().zip(v.iter()).for_each(|(s, x)| *s += x);
    }
    normalize(sum)
}

/// Softmax over cosines divided by `temperature`: MiniLM's cosines crowd
/// into a narrow band, so a small temperature spreads them into probabilities.
pub fn label_probabilities(text: &[f32], prototypes: &[Vec<f32>], temperature: f32) -> Vec<f32> {
    let logits: Vec<f32> = prototypes.iter().map(|p| dot(text, p) / temperature).collect();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let total: f32 = exp.iter().sum();
    exp.iter().map(|e| e / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prototypes_and_probabilities() {
        let p = prototype(&[&[1.0, 0.0], &[0.0, 1.0]]);
        assert!((p[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6 && (p[1] - p[0]).abs() < 1e-6);
        let probs = label_probabilities(&[1.0, 0.0], &[vec![1.0, 0.0], vec![0.0, 1.0]], 0.1);
        assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(probs[0] > 0.99, "a cosine gap of 1 at temperature 0.1 is decisive: {probs:?}");
        let even = label_probabilities(&[1.0, 0.0], &[vec![0.6, 0.8], vec![0.6, -0.8]], 0.1);
        assert!((even[0] - 0.5).abs() < 1e-6, "equal cosines split evenly");
    }
}
