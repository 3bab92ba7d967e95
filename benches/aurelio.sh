#!/usr/bin/env bash
# semroute side by side with aurelio's semantic-router (Python), in one run on this machine:
# the same prompts (the first 200 fresh prompts of tests/fixtures/fresh), the same
# all-MiniLM-L6-v2 ONNX graph (semroute's installed one, run by ONNX Runtime in both), start-up
# excluded; then semroute with its static model when that is installed. Prints each router's
# mean / p50 / p99 per decision and semroute's speed-up over aurelio.
#
#   bash benches/aurelio.sh [LIMIT]
#
# Installs semantic-router 1.1.1, tokenizers and onnxruntime from PyPI into target/aurelio-py
# (once; not your site-packages). Needs the MiniLM model (`semroute setup all-minilm-l6-v2`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
limit="${1:-200}"
python="${PYTHON:-python3}"
home="${SEMROUTE_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/semroute}"
py=target/aurelio-py
model="$home/models/all-minilm-l6-v2"
[ -f "$model/READY" ] || { echo "aurelio bench: no MiniLM model in $model (run: cargo run --release -- setup all-minilm-l6-v2)" >&2; exit 1; }
if ! PYTHONPATH="$py" "$python" -c "import semantic_router, tokenizers, onnxruntime" >/dev/null 2>&1; then
    echo "aurelio bench: installing semantic-router 1.1.1 into $py" >&2
    "$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$py" \
        "semantic-router==1.1.1" tokenizers "onnxruntime==1.32.0" >&2 \
        || { echo "aurelio bench: pip could not install semantic-router (is PyPI reachable?)" >&2; exit 1; }
fi
cargo build --release --example decision_timing >&2
prompts=tests/fixtures/fresh/prompts.jsonl
aurelio=$(PYTHONPATH="$py" "$python" benches/aurelio_bench.py "$model" exemplars "$prompts" "$limit")
# The same graph on both sides: MiniLM (float32), named, since it is no longer the default.
minilm=$(./target/release/examples/decision_timing --prompts "$prompts" --limit "$limit" --embedding-model all-minilm-l6-v2)
static=""
if [ -f "$home/models/static-all-minilm-l6-v2/READY" ]; then
    static=$(./target/release/examples/decision_timing --prompts "$prompts" --limit "$limit" --embedding-model static-all-minilm-l6-v2)
fi
"$python" - "$aurelio" "$minilm" "$static" <<'PY'
import json, sys
rows = [json.loads(a) for a in sys.argv[1:] if a]
base = rows[0]["mean_ms"]
print(f"| router | model | decisions | mean ms | p50 ms | p99 ms | aurelio's time / this one's |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    print(f"| {r['router']} | {r.get('model', 'all-minilm-l6-v2 (same ONNX graph)')} | {r['decisions']} | {r['mean_ms']:.3f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {base / r['mean_ms']:.1f}x |")
PY
