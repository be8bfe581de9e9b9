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

/// How texts are fed to the model: how many go in one call, and whether
/// texts of like length go together (a batch is padded to its longest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feeding {
    pub batch: usize,
    pub by_length: bool,
}

impl Feeding {
    /// One text per call: on one thread the fastest way through this model,
    /// faster per text than any batch (docs/benchmarks.md).
    pub const ONE_AT_A_TIME: Feeding = Feeding { batch: 1, by_length: false };
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
        let started = std::time::Instant::now();
        init_runtime(&config.runtime_library)?;
        let runtime_loaded = started.elapsed();
        let session = Session::builder()
            .map_err(runtime)?
            // Basic graph optimizations run this int8 model faster on one
            // thread than the extended and layout ones (docs/benchmarks.md).
            .with_optimization_level(GraphOptimizationLevel::Level1)
            .map_err(runtime)?
            .with_intra_threads(config.intra_threads.max(1))
            .map_err(runtime)?
            .commit_from_file(&model)
            .map_err(runtime)?;
        let session_made = started.elapsed();
        let input_names = session.inputs.iter().map(|i| i.name.clone()).collect();
        let mut tokenizer = Tokenizer::from_file(&tokenizer_file).map_err(tokenizer_error)?;
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
            .map_err(tokenizer_error)?;
        tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..Default::default() }));
        let tokenizer_read = started.elapsed();
        let mut embedder = Self { session: Mutex::new(session), tokenizer, input_names, dimensions: 0 };
        embedder.dimensions = embedder.embed(&["dimension probe"])?.first().map_or(0, Vec::len);
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        tracing::info!(model = %model.display(), dimensions = embedder.dimensions,
            runtime_ms = ms(runtime_loaded), session_ms = ms(session_made - runtime_loaded),
            tokenizer_ms = ms(tokenizer_read - session_made), first_embedding_ms = ms(started.elapsed() - tokenizer_read),
            "embedder loaded");
        Ok(embedder)
    }

    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Embeds `texts` as `feeding` says, in their order.
    pub fn embed_all(&self, texts: &[&str], feeding: Feeding) -> Result<Vec<Vec<f32>>, MlError> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        if feeding.by_length {
            // Characters stand in for tokens: close enough to group like lengths.
            order.sort_by_key(|&i| texts[i].len());
        }
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for group in order.chunks(feeding.batch.max(1)) {
            let batch: Vec<&str> = group.iter().map(|&i| texts[i]).collect();
            for (&i, vector) in group.iter().zip(self.embed(&batch)?) {
                out[i] = vector;
            }
        }
        Ok(out)
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

/// An embedder loading on a thread of its own, started at once: a function's
/// init need not wait for the model, and the first request that embeds
/// waits only for what is left of the load.
pub struct LoadingEmbedder {
    loader: Mutex<Option<std::thread::JoinHandle<Result<Embedder, MlError>>>>,
    loaded: OnceLock<Result<std::sync::Arc<Embedder>, String>>,
}

impl LoadingEmbedder {
    pub fn start(config: EmbedderConfig) -> Self {
        let loader = std::thread::Builder::new().name("keel-model-load".into()).spawn(move || Embedder::load(&config));
        match loader {
            Ok(handle) => Self { loader: Mutex::new(Some(handle)), loaded: OnceLock::new() },
            Err(e) => Self { loader: Mutex::new(None), loaded: OnceLock::from(Err(format!("could not start loading the model: {e}"))) },
        }
    }

    /// The embedder, once loaded (blocks until then; call it off async workers).
    pub fn get(&self) -> Result<std::sync::Arc<Embedder>, MlError> {
        let loaded = self.loaded.get_or_init(|| {
            let handle = self.loader.lock().ok().and_then(|mut l| l.take());
            match handle.map(std::thread::JoinHandle::join) {
                Some(Ok(Ok(embedder))) => Ok(std::sync::Arc::new(embedder)),
                Some(Ok(Err(e))) => Err(e.to_string()),
                Some(Err(_)) => Err("the model load panicked".into()),
                None => Err("the model load was lost".into()),
            }
        });
        loaded.clone().map_err(MlError::Runtime)
    }

    /// Why the model failed to load, once a `get` found it so (never blocks).
    pub fn load_error(&self) -> Option<String> {
        self.loaded.get().and_then(|r| r.as_ref().err().cloned())
    }
}

impl Drop for LoadingEmbedder {
    // A load still running when its owner goes away would be inside ONNX
    // Runtime when the process exits, and the runtime's teardown under a
    // session being built crashes the process: wait for the load instead.
    fn drop(&mut self) {
        if let Some(handle) = self.loader.get_mut().ok().and_then(Option::take) {
            let _ = handle.join();
        }
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
    fn feeding_by_length_keeps_each_text_its_own_vector_in_order() {
        let e = Embedder::load(&config()).unwrap();
        let texts = ["a much longer sentence that sorts after the others", "short", "middling length text", "tiny"];
        let fed = e.embed_all(&texts, Feeding { batch: 2, by_length: true }).unwrap();
        assert_eq!(fed.len(), texts.len());
        for (t, v) in texts.iter().zip(&fed) {
            assert!(dot(&e.embed(&[t]).unwrap()[0], v) > 0.999, "{t} got another text's vector");
        }
    }

    #[test]
    fn a_loading_embedder_hands_out_the_loaded_model_or_why_it_failed() {
        let loading = LoadingEmbedder::start(config());
        let (first, second) = (loading.get().unwrap(), loading.get().unwrap());
        assert!(std::sync::Arc::ptr_eq(&first, &second), "loaded once");
        let mut broken = config();
        broken.model_dir = PathBuf::from("/nonexistent");
        let err = LoadingEmbedder::start(broken).get().err().unwrap().to_string();
        assert!(err.contains("fetch-models"), "{err}");
    }

    const DROP_MID_LOAD_CHILD: &str = "KEEL_TEST_DROP_MID_LOAD_CHILD";

    /// Run only as the child of the test below: starts a load and lets the
    /// process exit while it may still be running.
    #[test]
    fn child_process_drops_a_loading_embedder_and_exits() {
        if std::env::var_os(DROP_MID_LOAD_CHILD).is_some() {
            drop(LoadingEmbedder::start(config()));
        }
    }

    #[test]
    fn a_process_exiting_while_its_model_loads_exits_cleanly() {
        let exe = std::env::current_exe().unwrap();
        for _ in 0..8 {
            let out = std::process::Command::new(&exe)
                .args(["--exact", "tests::child_process_drops_a_loading_embedder_and_exits", "--test-threads=1", "-q"])
                .env(DROP_MID_LOAD_CHILD, "1")
                .output()
                .unwrap();
            assert!(out.status.success(), "the child exited with {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
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
