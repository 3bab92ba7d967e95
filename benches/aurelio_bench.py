"""aurelio semantic-router, timed per decision on the same prompts and the same ONNX graph.

Usage: aurelio_bench.py MODEL_DIR EXEMPLARS_DIR PROMPTS_JSONL [LIMIT]

MODEL_DIR is semroute's installed all-MiniLM-L6-v2 (model.onnx + tokenizer.json). The encoder
runs that graph with ONNX Runtime and mean-pools, as semroute's FastEmbedder does. The routes are
the built-in exemplars' hand-labelled tiers (cheap, mid, strong), their prompts the utterances.
Prints one JSON object: decisions, mean, p50 and p99 per decision in milliseconds.
"""

import glob
import json
import os
import sys
import time
from typing import Any, List

import numpy as np
import onnxruntime as ort
from semantic_router import IndexedRouter, Route
from semantic_router.encoders.base import DenseEncoder
from tokenizers import Tokenizer


class OnnxMiniLM(DenseEncoder):
    """all-MiniLM-L6-v2 from semroute's ONNX graph: tokenise, run, mean-pool, normalise."""

    name: str = "all-minilm-l6-v2-onnx"
    tokenizer: Any = None
    session: Any = None

    def __init__(self, model_dir: str):
        super().__init__()
        tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        tok.enable_truncation(256)
        tok.enable_padding()
        self.tokenizer = tok
        self.session = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), providers=["CPUExecutionProvider"])

    def __call__(self, docs: List[Any]) -> List[List[float]]:
        out = []
        for s in range(0, len(docs), 32):
            enc = self.tokenizer.encode_batch([str(d) for d in docs[s : s + 32]])
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            h = self.session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
            v = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            out.extend(v.tolist())
        return out


def main():
    model_dir, exemplars, prompts_file = sys.argv[1:4]
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    by_tier = {"cheap": [], "mid": [], "strong": []}
    for f in sorted(glob.glob(os.path.join(exemplars, "*.jsonl"))):
        for line in open(f, encoding="utf-8"):
            if line.strip():
                ex = json.loads(line)
                if "label" in ex:
                    by_tier[ex["label"]["tier"]].append(ex["prompt"])
    routes = [Route(name=t, utterances=u) for t, u in by_tier.items() if u]
    router = IndexedRouter(encoder=OnnxMiniLM(model_dir), routes=routes)
    prompts = [json.loads(l)["prompt"] for l in open(prompts_file, encoding="utf-8") if l.strip()][:limit]
    for p in prompts[:5]:
        router(p)
    ms = []
    for p in prompts:
        t = time.perf_counter()
        router(p)
        ms.append((time.perf_counter() - t) * 1e3)
    ms.sort()
    at = lambda q: ms[round((len(ms) - 1) * q)]
    print(json.dumps({"router": "aurelio semantic-router", "decisions": len(ms), "mean_ms": sum(ms) / len(ms), "p50_ms": at(0.5), "p99_ms": at(0.99)}))


if __name__ == "__main__":
    main()
