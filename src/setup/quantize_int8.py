"""Writes an int8 copy of an installed transformer: weight matrices and word embeddings in int8.

Usage: quantize_int8.py TEACHER_DIR OUT_DIR

TEACHER_DIR is a float32 model installed by model.sh (model.onnx, the four tokenizer files).
Every MatMul whose second input is a weight matrix (the attention projections and the feed-
forward layers: 36 in MiniLM-L6, 72 in multilingual-e5-small) becomes ONNX Runtime's dynamic int8
MatMul (onnxruntime.quantization.quantize_dynamic): the weights int8 with one scale per output
column (per channel), the activations quantised per call. The word-embedding table becomes int8
too, one scale per token (quantize_word_embeddings): multilingual-e5-small's 250,037 x 384 table
is most of its weights, and in float32 it made loading take 3.4 s and 1.4 GB of memory. The attention products
(activation x activation), position embeddings, layer norms and GELU stay float32.

Before quantising, each layer's self-attention is fused into one com.microsoft Attention node
(fuse_attention: ONNX Runtime's own BERT fusion, after _prepare rewrites the mask and the score
scaling into the form it recognises, with the same values), which quantize_dynamic turns into
QAttention: the Q, K and V projections int8 in one matrix, the heads' reshapes and transposes
gone. The session runs 134 nodes instead of 305 for multilingual-e5-small, and the vectors are
those of the unfused int8 graph (cosine 1.000000 over 80 English and Chinese sentences); its
forward pass takes about 10% less time (measured in Python, one and two threads). Residual
adds, layer norms and GELU (as BiasGelu, exact erf) stay unfused otherwise.

Why per channel: one scale per whole matrix (per tensor), tried first, left the vectors at a
median cosine of 0.93 to the float32 ones (minimum 0.74) on the built-in exemplars, which changes
routing; one scale per column keeps them at 0.99 and the forward pass about twice as fast on a
2-core x86 machine (weights are read from memory in a quarter of the bytes).

Then it checks the copy against the float32 graph on fixed English and Chinese sentences
(tokenised by a plain vocabulary lookup, enough to feed real token ids) and fails when any mean-
pooled vector's cosine to the float32 one is below 0.95. Writes OUT_DIR/model.onnx and copies the
tokenizer files. Needs numpy, onnx and onnxruntime only (the fusion is onnxruntime.transformers).
"""

import json
import logging
import os
import shutil
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

TOKENIZER_FILES = ["tokenizer.json", "config.json", "special_tokens_map.json", "tokenizer_config.json"]
MIN_COSINE = 0.95
CHECK_SENTENCES = [
    "What is the capital of Australia?",
    "Prove that there are infinitely many primes, and explain each step of the argument.",
    "Refactor this multithreaded Java class so that it cannot deadlock, and prove it.",
    "Fix the typo in this sentence: the the cat sat on the mat.",
    "Summarise the following meeting notes into action items with owners and deadlines.",
    "用一句话总结这段新闻",
    "请证明存在无穷多个素数",
    "我们的登录接口已经把单引号转义了，渗透测试还是说能注入，帮我分析原因",
]


def ids_of(tok, text, prefix):
    """Token ids by looking whole words (then single characters) up in the vocabulary."""
    model = tok["model"]
    if model["type"] == "WordPiece":
        vocab = model["vocab"]
        start, end, unk = vocab["[CLS]"], vocab["[SEP]"], vocab["[UNK]"]
        words = text.lower().split()
        pieces = lambda w: [w] if w in vocab else list(w)  # noqa: E731
        lookup = lambda p: vocab.get(p, unk)  # noqa: E731
    elif model["type"] == "Unigram":
        vocab = {p: i for i, (p, _) in enumerate(model["vocab"])}
        start, end, unk = vocab["<s>"], vocab["</s>"], model.get("unk_id", 3)
        words = (prefix + text).split()
        pieces = lambda w: ["\u2581" + w] if "\u2581" + w in vocab else ["\u2581"] + list(w)  # noqa: E731
        lookup = lambda p: vocab.get(p, unk)  # noqa: E731
    else:
        sys.exit(f"unsupported tokenizer model {model['type']!r}")
    ids = [start] + [lookup(p) for w in words for p in pieces(w)][:254] + [end]
    return np.array([ids], np.int64)


def quantize_word_embeddings(model):
    """The word-embedding table as int8 with one scale per row (per token): the Gather reads the
    int8 row and its scale and multiplies them. (ONNX Runtime's own Gather quantisation keeps one
    scale for the whole table; on multilingual-e5-small that moved 11 of the 250 fresh prompts to
    another side, one scale per row keeps each token's own range.)"""
    inits = {i.name: i for i in model.graph.initializer}
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] == "word_embeddings"]
    if len(gathers) != 1 or "word_embeddings" not in inits:
        sys.exit("the teacher's graph has no Gather from its word_embeddings table")
    gather = gathers[0]
    table = numpy_helper.to_array(inits["word_embeddings"]).astype(np.float32)
    scale = np.abs(table).max(axis=1, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
    model.graph.initializer.remove(inits["word_embeddings"])
    model.graph.initializer.extend([numpy_helper.from_array(q, "word_embeddings_int8"),
                                    numpy_helper.from_array(scale.astype(np.float32), "word_embeddings_scale")])
    ids, out = gather.input[1], gather.output[0]
    at = list(model.graph.node).index(gather)
    model.graph.node.remove(gather)
    for k, node in enumerate([
        helper.make_node("Gather", ["word_embeddings_int8", ids], ["word_rows_int8"], name="word_rows_int8"),
        helper.make_node("Cast", ["word_rows_int8"], ["word_rows"], name="word_rows", to=TensorProto.FLOAT),
        helper.make_node("Gather", ["word_embeddings_scale", ids], ["word_row_scales"], name="word_row_scales"),
        helper.make_node("Mul", ["word_rows", "word_row_scales"], [out], name="word_embeddings_dequantised"),
    ]):
        model.graph.node.insert(at + k, node)


def _prepare(model, head_dim):
    """export_onnx.py's graph, rewritten (same values) into the shape ORT's BERT attention fusion
    (onnxruntime.transformers.fusion_attention) recognises:
    - the additive mask Unsqueeze(Mul(Sub(1, Cast(mask)), min), [1, 2]) becomes
      Mul(Sub(1, Cast(Unsqueeze(Unsqueeze(mask, 1), 2))), min);
    - the score scaling Mul(QK^T, 1/sqrt(d)) becomes Div(QK^T, sqrt(d)): the fusion looks for the
      mask as the first Mul feeding the mask Add, which otherwise finds the scaling Mul. The fused
      Attention applies 1/sqrt(d) itself."""
    g = model.graph
    for k, node in enumerate(g.node):
        if not node.name:
            node.name = f"node_{k}"
    by_out = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    uns = [n for n in g.node if n.op_type == "Unsqueeze" and n.input[0] in by_out and by_out[n.input[0]].op_type == "Mul"]
    if len(uns) != 1:
        raise SystemExit(f"expected one Unsqueeze of the additive attention mask, found {len(uns)}")
    un = uns[0]
    mul = by_out[un.input[0]]
    sub = by_out.get(mul.input[0])
    cast = by_out.get(sub.input[1]) if sub is not None else None
    if sub is None or sub.op_type != "Sub" or cast is None or cast.op_type != "Cast":
        raise SystemExit("the attention mask is not Mul(Sub(1, Cast(mask)), min)")
    g.initializer.extend([numpy_helper.from_array(np.array([1], np.int64), "mask_axis_1"),
                          numpy_helper.from_array(np.array([2], np.int64), "mask_axis_2")])
    at = list(g.node).index(cast)
    g.node.insert(at, helper.make_node("Unsqueeze", ["mask_rows", "mask_axis_2"], ["mask_4d"], name="mask_unsqueeze_2"))
    g.node.insert(at, helper.make_node("Unsqueeze", [cast.input[0], "mask_axis_1"], ["mask_rows"], name="mask_unsqueeze_1"))
    cast.input[0] = "mask_4d"
    mul.output[0] = un.output[0]
    g.node.remove(un)
    g.initializer.append(numpy_helper.from_array(np.array(np.sqrt(head_dim), np.float32), "sqrt_head_dim"))
    scaled = 0
    for n in g.node:
        if (n.op_type == "Mul" and n.input[1] in inits and n.input[0] in by_out
                and by_out[n.input[0]].op_type == "MatMul" and numpy_helper.to_array(inits[n.input[1]]).size == 1
                and np.isclose(float(numpy_helper.to_array(inits[n.input[1]])), 1.0 / np.sqrt(head_dim))):
            n.op_type, n.input[1] = "Div", "sqrt_head_dim"
            scaled += 1
    return scaled


def fuse_attention(model, num_heads, hidden):
    """The float32 graph with each layer's self-attention as one com.microsoft Attention (and each
    GELU with its bias as BiasGelu). Residual Add + LayerNormalization are left unfused (the
    embedder disables SkipLayerNormFusion; see embed.rs)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    layers = _prepare(model, hidden // num_heads)
    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False
    options.enable_embed_layer_norm = False  # the word-embedding table is quantised separately
    options.enable_gelu_approximation = False  # keep exact (erf) GELU
    options.use_raw_attention_mask(True)  # 2-D int32 mask: right for any padding side
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)  # "producer not matched"
    fused = optimize_model(model, model_type="bert", num_heads=num_heads, hidden_size=hidden,
                           optimization_options=options, opt_level=0, use_gpu=False).model
    if not any(o.domain == "com.microsoft" for o in fused.opset_import):
        fused.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    count = sum(n.op_type == "Attention" for n in fused.graph.node)
    if count != layers:
        raise SystemExit(f"attention fusion matched {count} of {layers} layers")
    return fused


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    teacher, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(teacher, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    src = onnx.load(os.path.join(teacher, "model.onnx"))
    # Each layer's self-attention as one Attention node (quantised below to QAttention).
    src = fuse_attention(src, cfg["num_attention_heads"], cfg["hidden_size"])
    weights = {i.name for i in src.graph.initializer}
    for k, node in enumerate(src.graph.node):
        if not node.name:
            node.name = f"node_{k}"
    chosen = [n.name for n in src.graph.node
              if (n.op_type == "MatMul" and n.input[1] in weights) or n.op_type == "Attention"]
    if not chosen:
        sys.exit("no weight MatMul found in the teacher's graph")
    quantize_word_embeddings(src)
    # ONNX Runtime's tool advises its shape pre-processing pass on every run; the check below is
    # what tells whether the result is right, so the advice is not shown.
    logging.getLogger().setLevel(logging.ERROR)
    named = os.path.join(out, "named.onnx")
    onnx.save(src, named)
    quantize_dynamic(named, os.path.join(out, "model.onnx"), nodes_to_quantize=chosen, per_channel=True,
                     weight_type=QuantType.QInt8,
                     # shape inference stops at com.microsoft ops; every tensor here is float32
                     extra_options={"MatMulConstBOnly": True, "DefaultTensorType": TensorProto.FLOAT})
    if any(n.op_type == "Attention" for n in onnx.load(os.path.join(out, "model.onnx")).graph.node):
        sys.exit("quantize_dynamic left an Attention node in float32")
    os.remove(named)
    for f in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(teacher, f), os.path.join(out, f))
    print(f"quantised {len(chosen)} weight nodes (the attention ones as QAttention; per channel) and the word embeddings (per token) to int8")
    check(teacher, out)


def check(teacher, out):
    with open(os.path.join(teacher, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    prefix = ""
    with open(os.path.join(teacher, "READY"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("prefix="):
                prefix = line.strip()[len("prefix="):].strip('"')
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    full = ort.InferenceSession(os.path.join(teacher, "model.onnx"), opts, providers=["CPUExecutionProvider"])
    small = ort.InferenceSession(os.path.join(out, "model.onnx"), opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in full.get_inputs()}
    cosines = []
    for text in CHECK_SENTENCES:
        ids = ids_of(tok, text, prefix)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(ids)
        a = full.run(None, feed)[0][0].mean(axis=0)
        b = small.run(None, feed)[0][0].mean(axis=0)
        cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    worst = min(cosines)
    if not worst >= MIN_COSINE:
        sys.exit(f"the int8 graph disagrees with the float32 one: cosine {worst:.4f} < {MIN_COSINE}")
    print(f"checked against the float32 graph on {len(cosines)} sentences: cosine min {worst:.4f}, "
          f"median {float(np.median(cosines)):.4f}")


if __name__ == "__main__":
    main()
