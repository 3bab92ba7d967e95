#!/usr/bin/env bash
# The savings benchmark on every shared data set, through `semroute eval savings` (a real Router
# built on each train split; see semroute::eval::run), then one Markdown table of the figures.
#
#   bash benches/savings.sh [--seeds N] [--plots] [--embedding-model M] [--sets "a b ..."]
#       N seeds: 42, then 1, 2, ... (default 1); M: an installed embedding model (default: the
#       default model, multilingual-e5-small in int8);
#       --sets: only these data sets
#
# Data: $SEMROUTE_DATA, else ../shared/data beside the checkout. Without it the benchmark says
# so and exits 0 (a clone of the repository alone has no data sets; its tests use fixtures).
# Output: target/savings/<set>.json (one JSON object per seed, then the means), and with --plots
# benches/figures/savings-<set>.png (seed 42); with another embedding model, target/savings/<M>/
# (and no plots).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seeds=1
plots=0
model=""
sets=""
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) seeds="$2"; shift 2 ;;
        --plots) plots=1; shift ;;
        --embedding-model) model="$2"; shift 2 ;;
        --sets) sets="$2"; shift 2 ;;
        *) echo "benches/savings.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
data="${SEMROUTE_DATA:-../shared/data}"
if [ ! -d "$data" ]; then
    echo "savings benchmark SKIPPED: no data sets at $data (set SEMROUTE_DATA to run it)"
    exit 0
fi
cargo build --release --bin semroute
out=target/savings
embed=()
if [ -n "$model" ]; then
    out="target/savings/$model"
    embed=(--embedding-model "$model")
    plots=0
fi
mkdir -p "$out"
run() {
    local name="$1"; shift
    if [ -n "$sets" ] && [[ " $sets " != *" $name "* ]]; then
        return
    fi
    local file="$data/$name.jsonl"
    if [ ! -f "$file" ]; then
        echo "savings benchmark: $file is missing, skipped"
        return
    fi
    local plot=()
    [ "$plots" = 1 ] && plot=(--plot "benches/figures/savings-$name.png")
    local start=$SECONDS
    ./target/release/semroute eval savings --dataset "$file" "$@" --seeds "$seeds" --json "${plot[@]}" "${embed[@]}" > "$out/$name.json" \
        || { echo "savings benchmark: $name failed" >&2; exit 1; }
    echo "savings benchmark: $name done in $((SECONDS - start)) s"
}
run routellm-gsm8k --prices exemplars/benchmarks/prices-routellm.toml
# MT-Bench keeps no answers, so their length is an assumption the report states.
run routellm-mtbench --prices exemplars/benchmarks/prices-routellm.toml --assume-output-tokens 500
run zeroeval-gsm --prices "$data/prices-2024.toml"
run zeroeval-crux --prices "$data/prices-2024.toml"
run alpacaeval --prices "$data/prices-2024.toml"
run llmeval2-zh --prices "$data/prices-zh-2023.toml"
run halluqa-zh --prices "$data/prices-zh-2023.toml"
python3 benches/savings_table.py "$out"
