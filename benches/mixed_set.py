#!/usr/bin/env python3
"""A mixed workload made of shared data sets: their rows together, on the models they share.

    python3 benches/mixed_set.py [--data DIR] [--out FILE] [SET ...]

Concatenates the named sets of DIR (default ../shared/data; default sets zeroeval-gsm and
zeroeval-crux, school maths and code reasoning), keeping in each row only the models every row
scores, with their measured scores and answer lengths unchanged. A router earns most where one
workload mixes tasks that different models are good at; neither set alone shows that. Run it
with the sets' prices, e.g.

    semroute eval savings --dataset FILE --prices ../shared/data/prices-2024.toml --seeds 5
"""
import argparse
import json
import os
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    ap.add_argument("--out", default="target/mixed/zeroeval-gsm-crux.jsonl")
    ap.add_argument("sets", nargs="*", default=["zeroeval-gsm", "zeroeval-crux"])
    a = ap.parse_args()
    rows = []
    for name in a.sets:
        path = os.path.join(a.data, name + ".jsonl")
        if not os.path.exists(path):
            sys.exit(f"mixed_set.py: no data set {path}")
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                try:
                    row = json.loads(line)
                    if not isinstance(row["scores"], dict) or not isinstance(row["prompt"], str):
                        raise ValueError("scores must be an object and prompt a string")
                except (ValueError, KeyError, TypeError) as e:
                    sys.exit(f"mixed_set.py: {path}:{n}: {e}")
                rows.append(row)
    if not rows:
        sys.exit("mixed_set.py: the sets have no rows")
    common = set(rows[0]["scores"])
    for row in rows:
        common &= set(row["scores"])
    if len(common) < 2:
        sys.exit(f"mixed_set.py: the sets share {len(common)} model(s); routing needs two")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as out:
        for row in rows:
            row["scores"] = {m: row["scores"][m] for m in sorted(common)}
            for per_model in ("output_tokens", "cost_usd"):
                if isinstance(row.get(per_model), dict):
                    row[per_model] = {m: v for m, v in sorted(row[per_model].items()) if m in common}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} rows of {', '.join(a.sets)} on the {len(common)} models they share -> {a.out}")


if __name__ == "__main__":
    main()
