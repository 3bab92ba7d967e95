#!/usr/bin/env python3
"""The savings benchmark per embedding model, seed 42: one Markdown row per data set with each
model's AIQ (against the single models' hull) and its cost at 95% of the best model's quality
over the cheapest single model reaching 95%. Reads target/savings/<model>/<set>.json
(benches/savings.sh --embedding-model <model>, for every model, the default included)."""
import json
import sys
from pathlib import Path

SETS = ["zeroeval-gsm", "zeroeval-crux", "alpacaeval", "llmeval2-zh", "halluqa-zh", "routellm-gsm8k", "routellm-mtbench"]
MODELS = ["all-minilm-l6-v2", "all-minilm-l6-v2-int8", "multilingual-e5-small", "multilingual-e5-small-int8", "static-all-minilm-l6-v2", "static-multilingual-e5-small"]
root = Path(sys.argv[1] if len(sys.argv) > 1 else "target/savings")


def seed42(model, name):
    path = root / model / f"{name}.json"
    if not path.exists():
        return None
    runs = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    return next((r for r in runs if r.get("seed") == 42 and "targets" in r), None)


def cell(r):
    if r is None:
        return "—"
    t = next(t for t in r["targets"] if abs(t["target"] - 0.95) < 1e-9)
    s = t["cheapest_single"]
    ratio = f"{t['cost_usd'] / s[1]:.2f}×" if s else "n/a"
    mark = "**" if r["aiq"] >= r["zero_router_aiq"] else ""
    return f"{mark}{r['aiq']:.4f}{mark} / {ratio}"


print("| data set (hull AIQ) | " + " | ".join(MODELS) + " |")
print("| --- | " + " | ".join("---" for _ in MODELS) + " |")
for name in SETS:
    rows = [seed42(m, name) for m in MODELS]
    hull = next((r["zero_router_aiq"] for r in rows if r), None)
    if hull is None:
        continue
    print(f"| {name} ({hull:.4f}) | " + " | ".join(cell(r) for r in rows) + " |")
counts = []
for m in MODELS:
    rs = [seed42(m, n) for n in SETS]
    rs = [r for r in rs if r]
    above = sum(r["aiq"] >= r["zero_router_aiq"] for r in rs)
    cheaper = sum(
        1
        for r in rs
        for t in [next(t for t in r["targets"] if abs(t["target"] - 0.95) < 1e-9)]
        if t["cheapest_single"] and t["cost_usd"] <= t["cheapest_single"][1] * (1 + 1e-9)
    )
    counts.append(f"{above} / {cheaper} of {len(rs)}")
print("| sets at or above the hull / at most the cheapest single model at 95% | " + " | ".join(counts) + " |")
