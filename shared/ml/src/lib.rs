//! keel-ml: in-function models on ONNX Runtime (`ort`, loaded dynamically from
//! `ORT_DYLIB_PATH` or an explicit path) with Hugging Face tokenizers.
//!
//! [`Embedder`] runs all-MiniLM-L6-v2 (int8) and returns mean-pooled,
//! L2-normalized sentence vectors, so a dot product is the cosine similarity.
//! [`classify`] builds few-shot classification and ranking on those vectors.

pub mod classify;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// Tokens per input; all-MiniLM-L6-v2 was trained on 256 at most.
pub const MAX_TOKENS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum MlError {
    #[error("model files: {0}")]
    Files(String),
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

fn runtime<E: std::fmt::Display>(e: E) -> MlError {
    MlError::Runtime(e.to_string())
}

fn tokenizer_error<E: std::fmt::Display>(e: E) -> MlError {
    MlError::Tokenizer(e.to_string())
}

/// Where the embedding model lives: a directory with `model.onnx` and
/// `tokenizer.json`, plus the ONNX Runtime shared library.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbedderConfig {
    pub model_dir: PathBuf,
    pub runtime_library: PathBuf,
    /// ONNX Runtime intra-op threads (1 in Lambda: one vCPU per ~1.8 GB).
    pub intra_threads: usize,
}

impl EmbedderConfig {
    /// The layout `scripts/fetch-models.sh` (and the Lambda layer) writes
    /// under `root`: `minilm/{model.onnx,tokenizer.json}` and
    /// `onnxruntime/libonnxruntime.so`.
    pub fn fetched(root: &Path, intra_threads: usize) -> Self {
        Self {
            model_dir: root.join("minilm"),
            runtime_library: root.join("onnxruntime/libonnxruntime.so"),
            intra_threads,
        }
    }
}

/// The ONNX Runtime library can be loaded once per process; later calls must
/// name the same file.
static RUNTIME: OnceLock<Result<PathBuf, String>> = OnceLock::new();

fn init_runtime(library: &Path) -> Result<(), MlError> {
    let loaded = RUNTIME.get_or_init(|| {
        if !library.is_file() {
            return Err(format!("{} not found (run scripts/fetch-models.sh)", library.display()));
        }
        ort::init_from(library.display().to_string())
            .with_name("keel")
            .commit()
            .map(|_| library.to_path_buf())
            .map_err(|e| e.to_string())
    });
    match loaded {
        Ok(path) if path == library => Ok(()),
        Ok(path) => Err(MlError::Runtime(format!("already loaded from {}", path.display()))),
        Err(e) => Err(MlError::Runtime(e.clone())),
    }
}

pub struct Embedder {
    session: Mutex<Session>,
    tokenizer: Tokenizer,
    input_names: Vec<String>,
    dimensions: usize,
}

impl Embedder {
    pub fn load(config: &EmbedderConfig) -> Result<Self, MlError> {
        let model = config.model_dir.join("model.onnx");
        let tokenizer_file = config.model_dir.join("tokenizer.json");
        for f in [&model, &tokenizer_file] {
            if !f.is_file() {
                return Err(MlError::Files(format!("{} not found (run scripts/fetch-models.sh)", f.display())));
            }
        }
        init_runtime(&config.runtime_library)?;
        let session = Session::builder()
            .map_err(runtime)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(runtime)?
            .with_intra_threads(config.intra_threads.max(1))
            .map_err(runtime)?
            .commit_from_file(&model)
            .map_err(runtime)?;
        let input_names = session.inputs.iter().map(|i| i.name.clone()).collect();
        let mut tokenizer = Tokenizer::from_file(&tokenizer_file).map_err(tokenizer_error)?;
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
            .map_err(tokenizer_error)?;
        tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..Default::default() }));
        let mut embedder = Self { session: Mutex::new(session), tokenizer, input_names, dimensions: 0 };
        embedder.dimensions = embedder.embed(&["dimension probe"])?.first().map_or(0, Vec::len);
        tracing::info!(model = %model.display(), dimensions = embedder.dimensions, "embedder loaded");
        Ok(embedder)
    }

    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Embeds a batch of texts in one model call.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, MlError> {
        if texts.is_empty() {
            return Ok(vec![]);
        }
        let encodings = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(tokenizer_error)?;
        let batch = encodings.len();
        let len = encodings.first().map_or(0, |e| e.get_ids().len());
        let column = |f: fn(&tokenizers::Encoding) -> &[u32]| -> Vec<i64> {
            encodings.iter().flat_map(|e| f(e).iter().map(|&v| i64::from(v))).collect()
        };
        let mask = column(tokenizers::Encoding::get_attention_mask);
        let mut inputs = Vec::new();
        for name in &self.input_names {
            let values = match name.as_str() {
                "input_ids" => column(tokenizers::Encoding::get_ids),
                "attention_mask" => mask.clone(),
                "token_type_ids" => column(tokenizers::Encoding::get_type_ids),
                other => return Err(MlError::Runtime(format!("unexpected model input {other}"))),
            };
            let tensor = Tensor::from_array(([batch, len], values)).map_err(runtime)?;
            inputs.push((std::borrow::Cow::from(name.as_str()), ort::session::SessionInputValue::from(tensor)));
        }
        let mut session = self.session.lock().map_err(|_| MlError::Runtime("session lock poisoned".into()))?;
        let outputs = session.run(inputs).map_err(runtime)?;
        let (shape, data) = outputs[0].try_extract_tensor::<f32>().map_err(runtime)?;
        let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let vectors: Vec<Vec<f32>> = match dims.as_slice() {
            // Token embeddings: mean over the real (unmasked) tokens.
            [b, l, h] if *b == batch && *l == len => (0..batch)
                .map(|i| {
                    let mut v = vec![0f32; *h];
                    let mut count = 0f32;
                    for t in 0..len {
                        if mask[i * len + t] == 1 {
                            let row = &data[(i * len + t) * h..(i * len + t + 1) * h];
                            v.iter_mut().zip(row).for_each(|(a, b)| *a += b);
                            count += 1.0;
                        }
                    }
                    v.iter_mut().for_each(|a| *a /= count.max(1.0));
                    v
                })
                .collect(),
            // Already pooled.
            [b, h] if *b == batch => data.chunks(*h).map(<[f32]>::to_vec).collect(),
            other => return Err(MlError::Runtime(format!("unexpected output shape {other:?}"))),
        };
        Ok(vectors.into_iter().map(normalize).collect())
    }
}

pub(crate) fn normalize(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model fetched by scripts/fetch-models.sh (the test script runs it).
    fn config() -> EmbedderConfig {
        EmbedderConfig::fetched(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.models"), 1)
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn embeddings_are_normalized_and_semantic() {
        let e = Embedder::load(&config()).unwrap();
        assert_eq!(e.dimensions(), 384);
        let v = e
            .embed(&["How do I reset my password?", "Steps to recover account login credentials", "The cat sat on the mat."])
            .unwrap();
        for x in &v {
            assert!((dot(x, x) - 1.0).abs() < 1e-3);
        }
        assert!(dot(&v[0], &v[1]) > dot(&v[0], &v[2]) + 0.2, "related texts must be closer than unrelated ones");
    }

    #[test]
    fn a_batch_matches_single_calls() {
        let e = Embedder::load(&config()).unwrap();
        let texts = ["short", "a much longer sentence that forces padding in the batch"];
        let batch = e.embed(&texts).unwrap();
        for (t, b) in texts.iter().zip(&batch) {
            let single = e.embed(&[t]).unwrap();
            assert!(dot(&single[0], b) > 0.999, "padding must not change a vector");
        }
    }

    #[test]
    fn missing_files_are_a_clear_error() {
        let mut c = config();
        c.model_dir = PathBuf::from("/nonexistent");
        let err = Embedder::load(&c).err().unwrap().to_string();
        assert!(err.contains("fetch-models"), "{err}");
    }
}
