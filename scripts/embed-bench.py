"""The embedding model fed from Python's onnxruntime, as keel-eval's
`embed-feed` feeds it from Rust: the same model.onnx and tokenizer.json, one
intra-op thread, basic graph optimizations (as keel_ml::Embedder), the same
passages (SciFact's first N documents cut to 600 characters), the same
feeding (batch size, grouped by length or not), mean pooling over the
attention mask.

Usage: embed-bench.py MODEL_DIR CORPUS_JSONL PASSAGES BATCH BY_LENGTH(0|1)
Prints one line: passages per second."""

import json
import sys
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

model_dir, corpus, count, batch, by_length = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"

options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
session = ort.InferenceSession(f"{model_dir}/model.onnx", options, providers=["CPUExecutionProvider"])
inputs = [i.name for i in session.get_inputs()]
tokenizer = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
tokenizer.enable_truncation(256)
tokenizer.enable_padding()

with open(corpus, encoding="utf-8") as f:
    passages = [json.loads(line)["text"][:600] for _, line in zip(range(count), f)]


def embed(texts):
    encodings = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}
    out = session.run(None, {k: v for k, v in feed.items() if k in inputs})[0]
    pooled = (out * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


order = sorted(range(len(passages)), key=lambda i: len(passages[i].encode("utf-8"))) if by_length else list(range(len(passages)))
embed(passages[:1])
started = time.perf_counter()
for start in range(0, len(order), batch):
    embed([passages[i] for i in order[start:start + batch]])
print(f"{len(passages) / (time.perf_counter() - started):.2f}")
