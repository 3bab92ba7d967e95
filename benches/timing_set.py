#!/usr/bin/env python3
"""A data set of RouteLLM's MMLU size, for timing the savings benchmark alone.

    python3 benches/timing_set.py [--data DIR] [--out FILE] [--rows N] [--seed S]

Takes every prompt of the shared data sets (DIR, default ../shared/data), four times over with
different lead-ins, deals them in a seeded order and keeps the first N (default 14,042, the size
of RouteLLM's MMLU set), with random 0/1 scores for RouteLLM's two models. The scores are noise:
the set measures time and memory, never routing quality. Run it with RouteLLM's prices, e.g.

    semroute eval savings --dataset FILE --prices exemplars/benchmarks/prices-routellm.toml \\
        --assume-output-tokens 300 --json
"""
import argparse
import glob
import json
import os
import random
import sys

LEAD_INS = ["", "Please answer carefully. ", "Question from a user: ", "Think it through, then answer. "]
MODELS = ["gpt-4-1106-preview", "mixtral-8x7b-instruct"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    ap.add_argument("--out", default="target/timing/mmlu-size.jsonl")
    ap.add_argument("--rows", type=int, default=14042)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    files = sorted(glob.glob(os.path.join(a.data, "*.jsonl")))
    if not files:
        sys.exit(f"timing_set.py: no data sets (*.jsonl) in {a.data}")
    prompts = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                try:
                    prompts.append(json.loads(line)["prompt"])
                except (ValueError, KeyError) as e:
                    sys.exit(f"timing_set.py: {f}:{n}: no prompt ({e})")
    prompts = sorted(set(prompts))
    rows = [lead + p for lead in LEAD_INS for p in prompts]
    rng = random.Random(a.seed)
    rng.shuffle(rows)
    if len(rows) < a.rows:
        sys.exit(f"timing_set.py: only {len(rows)} prompts from {a.data}, {a.rows} asked for")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as out:
        for i, p in enumerate(rows[: a.rows]):
            scores = {m: float(rng.random() < 0.5 + 0.2 * (m == MODELS[0])) for m in MODELS}
            out.write(json.dumps({"id": f"timing-{i:05}", "prompt": p, "scores": scores}, ensure_ascii=False) + "\n")
    print(f"{a.rows} rows from {len(prompts)} prompts in {len(files)} sets -> {a.out}")


if __name__ == "__main__":
    main()
