//! The in-function (T1) model for labels and rankings: the embedding model
//! retrieval already loads, its vectors of label texts and documents cached
//! in the warm function.

use crate::classify::{Label, LabelScore};
use keel_core::warm_cache::WarmCache;
use keel_core::KeelError;
use keel_ml::classify::{label_probabilities, prototype};
use keel_retrieval::Retrieval;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The in-function model, as responses and the decision log name it.
pub const IN_FUNCTION_MODEL: &str = "all-MiniLM-L6-v2";
/// Softmax temperature over cosines (chosen on BFCL's `multiple` tool-choice
/// cases, reported on `live_multiple`: `keel-eval classify`, docs/gateway.md).
const TEMPERATURE: f32 = 0.05;
/// Texts whose vectors stay cached: label texts and documents repeat across requests.
const CACHED_VECTORS: usize = 8_192;


/// The vectors of texts the embedding model has made in this warm function.
pub(crate) struct InFunction {
    vectors: WarmCache<[u8; 32], Arc<Vec<f32>>>,
}

impl InFunction {
    pub(crate) fn new() -> Self {
        Self { vectors: WarmCache::new(None, CACHED_VECTORS) }
    }

    /// Vectors of `texts`, embedding (through retrieval's embedder) only
    /// the ones not cached. `None` without an embedding model.
    pub(crate) async fn vectors(&self, retrieval: &Retrieval, texts: &[&str]) -> Result<Option<Vec<Arc<Vec<f32>>>>, KeelError> {
        if !retrieval.embeds() {
            return Ok(None);
        }
        let keys: Vec<[u8; 32]> = texts.iter().map(|t| Sha256::digest(t.as_bytes()).into()).collect();
        let mut out: Vec<Option<Arc<Vec<f32>>>> = keys.iter().map(|k| self.vectors.get(k)).collect();
        let missing: Vec<usize> = (0..texts.len()).filter(|&i| out[i].is_none()).collect();
        if !missing.is_empty() {
            let made = retrieval.embed(missing.iter().map(|&i| texts[i].to_string()).collect()).await?;
            for (&i, v) in missing.iter().zip(made) {
                let v = Arc::new(v);
                self.vectors.insert(keys[i], v.clone());
                out[i] = Some(v);
            }
        }
        Ok(Some(out.into_iter().flatten().collect()))
    }

    /// The classifier's probability for each label, highest first; `None`
    /// without an embedder.
    pub(crate) async fn label_scores(&self, retrieval: &Retrieval, text: &str, labels: &[Label]) -> Result<Option<Vec<LabelScore>>, KeelError> {
        let label_texts: Vec<Vec<String>> = labels.iter().map(Label::texts).collect();
        let mut all: Vec<&str> = vec![text];
        all.extend(label_texts.iter().flatten().map(String::as_str));
        let Some(vectors) = self.vectors(retrieval, &all).await? else { return Ok(None) };
        let mut at = 1;
        let prototypes: Vec<Vec<f32>> = label_texts
            .iter()
            .map(|texts| {
                let own: Vec<&[f32]> = vectors[at..at + texts.len()].iter().map(|v| v.as_slice()).collect();
                at += texts.len();
                prototype(&own)
            })
            .collect();
        let probabilities = label_probabilities(&vectors[0], &prototypes, TEMPERATURE);
        let mut scores: Vec<LabelScore> =
            labels.iter().zip(probabilities).map(|(l, score)| LabelScore { label: l.name.clone(), score }).collect();
        scores.sort_by(|a, b| b.score.total_cmp(&a.score));
        Ok(Some(scores))
    }
}
