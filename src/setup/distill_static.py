"""Distils a static embedding model from an installed sentence transformer (the model2vec recipe).

Usage: distill_static.py TEACHER_DIR OUT_DIR [--dims 256] [--batch 512]

TEACHER_DIR is a model installed by model.sh (model.onnx with a last_hidden_state output, and
tokenizer.json). Following model2vec (MinishLab/model2vec, distill/distillation.py, v0.8):
  1. every vocabulary token but [unused*] and the mask goes through the teacher alone, between the
     tokenizer's own start and end tokens ([CLS] tok [SEP], <s> tok </s>), and its vector is the
     mean of the three output positions;
  2. PCA to --dims dimensions (centred, not whitened), fitted on those vectors;
  3. each row is scaled by a SIF weight a / (a + p), a = 1e-4, with p estimated by Zipf's law
     from the token's rank in id order (p_i proportional to 1 / (i + 2)).
Rows follow token ids (a row per id; the rows left out stay zero), so the Rust side maps an id to
its row directly. Writes OUT_DIR/embeddings.f16 (little-endian float16, rows x dims),
tokenizer.json (the teacher's) and static.json (dims, rows, teacher, recipe). Needs numpy and
onnxruntime only.
"""

import json
import os
import re
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    args = sys.argv[1:]
    if len(args) < 2:
        sys.exit("usage: distill_static.py TEACHER_DIR OUT_DIR [--dims N] [--batch N]")
    teacher, out = args[0], args[1]
    dims, batch = 256, 512
    rest = args[2:]
    while rest:
        flag, value = rest[0], rest[1]
        if flag == "--dims":
            dims = int(value)
        elif flag == "--batch":
            batch = int(value)
        else:
            sys.exit(f"unknown argument {flag}")
        rest = rest[2:]

    tok = json.load(open(os.path.join(teacher, "tokenizer.json"), encoding="utf-8"))
    model = tok["model"]
    if model["type"] == "WordPiece":
        pieces = {i: t for t, i in model["vocab"].items()}
    elif model["type"] == "Unigram":
        pieces = {i: p[0] for i, p in enumerate(model["vocab"])}
    else:
        sys.exit(f"unsupported tokenizer model {model['type']}")
    for a in tok.get("added_tokens", []):
        pieces[a["id"]] = a["content"]
    rows = max(pieces) + 1
    ids_of = {t: i for i, t in pieces.items()}
    single = tok["post_processor"]["single"]
    specials = [s["SpecialToken"]["id"] for s in single if "SpecialToken" in s]
    if len(specials) != 2:
        sys.exit(f"expected a start and an end token around a sequence, found {specials}")
    bos, eos = ids_of[specials[0]], ids_of[specials[1]]
    skip = re.compile(r"^\[unused\d+\]$|^\[MASK\]$|^<mask>$")
    keep = np.array(sorted(i for i, t in pieces.items() if not skip.match(t)), dtype=np.int64)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    sess = ort.InferenceSession(os.path.join(teacher, "model.onnx"), opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    hidden = sess.get_outputs()[0].shape[-1]
    vecs = np.zeros((len(keep), hidden), dtype=np.float32)
    started = time.time()
    for s in range(0, len(keep), batch):
        ids = keep[s : s + batch]
        x = np.stack([np.full(len(ids), bos), ids, np.full(len(ids), eos)], axis=1).astype(np.int64)
        feed = {"input_ids": x, "attention_mask": np.ones_like(x)}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(x)
        h = sess.run(["last_hidden_state"], feed)[0]
        vecs[s : s + len(ids)] = h.mean(axis=1)
        if s // batch % 50 == 0:
            print(f"  {s + len(ids)} / {len(keep)} tokens ({time.time() - started:.0f} s)", file=sys.stderr)
    vecs = np.nan_to_num(vecs)

    # PCA: centred, not whitened; the covariance route (hidden x hidden) keeps memory small.
    dims = min(dims, hidden)
    mean = vecs.mean(axis=0)
    centred = vecs - mean
    cov = centred.T @ centred
    evals, evecs = np.linalg.eigh(cov.astype(np.float64))
    top = evecs[:, np.argsort(evals)[::-1][:dims]].astype(np.float32)
    reduced = centred @ top

    # SIF weights from Zipf ranks (rank = position in id order among the tokens kept).
    ranks = np.arange(len(keep), dtype=np.float64)
    p = 1.0 / (ranks + 2.0)
    p /= p.sum()
    weights = (1e-4 / (1e-4 + p)).astype(np.float32)
    reduced *= weights[:, None]

    table = np.zeros((rows, dims), dtype=np.float16)
    table[keep] = reduced.astype(np.float16)
    os.makedirs(out, exist_ok=True)
    table.astype("<f2").tofile(os.path.join(out, "embeddings.f16"))
    with open(os.path.join(teacher, "tokenizer.json"), "rb") as src, open(os.path.join(out, "tokenizer.json"), "wb") as dst:
        dst.write(src.read())
    meta = {
        "rows": int(rows),
        "dims": int(dims),
        "teacher": os.path.basename(os.path.normpath(teacher)),
        "recipe": "model2vec: mean of [start, token, end] outputs; PCA (centred); SIF a=1e-4 on Zipf ranks; float16",
        "tokens_distilled": int(len(keep)),
        "seconds": round(time.time() - started, 1),
    }
    with open(os.path.join(out, "static.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"distilled {len(keep)} tokens to {dims} dimensions in {meta['seconds']} s", file=sys.stderr)


if __name__ == "__main__":
    main()
