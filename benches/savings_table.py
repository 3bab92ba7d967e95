#!/usr/bin/env python3
"""Prints the savings benchmark's figures (target/savings/*.json, from benches/savings.sh) as
Markdown tables: per data set, seed 42 and the mean over the seeds run."""
import json
import sys
from pathlib import Path

SETS = ["zeroeval-gsm", "zeroeval-crux", "alpacaeval", "llmeval2-zh", "halluqa-zh", "routellm-gsm8k", "routellm-mtbench"]
out = Path(sys.argv[1] if len(sys.argv) > 1 else "target/savings")


def load(name):
    path = out / f"{name}.json"
    if not path.exists():
        return None
    lines = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    runs = [l for l in lines if "mean" not in l]
    return runs


def seed42():
    """(name, its seed-42 run, or its first) for every set with results."""
    for name in SETS:
        runs = load(name)
        if runs:
            yield name, next((r for r in runs if r["seed"] == 42), runs[0])


def at(r, x):
    """Target x's row among r's `targets` (what `semroute route --keep X` on the train split gives)."""
    return next(t for t in r["targets"] if abs(t["target"] - x) < 1e-9)


def met(t):
    return t["kept"] >= t["target"] - 0.01 - 1e-12


rows = []
print("| data set (test prompts, models) | AIQ router / hull / oracle | kept at 90% / 95% / 98% | random at the 95% point's reference share: kept | cost at 95%: router / cheapest single at 95% / oracle | gap to the oracle closed | APGR | chosen for the curve (out of fold) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for name in SETS:
    runs = load(name)
    if not runs:
        continue
    for label, group in [("seed 42", [r for r in runs if r["seed"] == 42]), (f"mean of {len(runs)} seeds", runs)]:
        if not group or (label.startswith("mean") and len(runs) < 2):
            continue
        n = len(group)
        mean = lambda f: sum(f(r) for r in group) / n
        def kept_cell(x):
            ok = sum(met(at(r, x)) for r in group)
            return f"{100 * mean(lambda r: at(r, x)['kept']):.1f}%" + ("" if ok == n else f" ({ok} of {n} ≥ X−1)")
        kept = " / ".join(kept_cell(x) for x in (0.90, 0.95, 0.98))
        def single(r):
            s = at(r, 0.95)["cheapest_single"]
            return s[1] if s else float("nan")
        ratio = mean(lambda r: at(r, 0.95)["cost_usd"] / single(r))
        gap = mean(lambda r: (single(r) - at(r, 0.95)["cost_usd"]) / (single(r) - at(r, 0.95)["oracle_cost_usd"]))
        r0 = group[0]
        chosen = ", ".join(sorted({f"{r['chosen']['config']['name']}/{r['chosen']['policy']}" for r in group}))
        rows.append(name)
        above = sum(r["aiq"] >= r["zero_router_aiq"] for r in group)
        hull_note = "" if above == n else f" ({above} of {n} ≥ hull)"
        print(f"| {name} ({r0['test']}, {len(r0['models'])}) {label} | {mean(lambda r: r['aiq']):.4f} / {mean(lambda r: r['zero_router_aiq']):.4f} / {mean(lambda r: r['oracle_aiq']):.4f}"
              f"{hull_note}"
              f" | {kept} | {100 * mean(lambda r: r['random_at_95']['quality'] / at(r, 0.95)['reference_quality']):.1f}%"
              f" | ${mean(lambda r: at(r, 0.95)['cost_usd']):.4f} / ${mean(single):.4f} / ${mean(lambda r: at(r, 0.95)['oracle_cost_usd']):.4f} ({ratio:.2f}×)"
              f" | {100 * gap:.0f}% | {mean(lambda r: r['apgr']):.3f} | {chosen} |")
if not rows:
    print("(no results in", out, ")")

print()
print("| data set, seed 42 | Brier: router / each model's train mean | answer tokens, mean abs. error: router / each model's train mean | chosen on train for 90% / 95% / 98% | seconds |")
print("| --- | --- | --- | --- | --- |")
for name, r in seed42():
    c = r["calibration"]
    mae = r["output_tokens_mae"]
    mae_cell = f"{mae[0]:.1f} / {mae[1]:.1f}" if mae else "no answer lengths"
    picks = " / ".join(f"{t['config']} {t['policy']}" for t in r["targets"])
    print(f"| {name} | {c['brier']:.4f} / {c['baseline_brier']:.4f} | {mae_cell} | {picks} | {r['seconds']:.1f} |")

print()
print("How much of seed 42's test figures is the draw of its test split: 90% intervals over 1,000 bootstrap replicates of the test prompts, the router's picks unchanged (`test_intervals`):")
print()
print("| data set, seed 42 | AIQ − hull: measured, 90% interval (replicates ≥ 0) | kept at 90% / 95% / 98%: 90% interval (replicates ≥ X−1) | cost at 95% over the cheapest single at 95% | APGR |")
print("| --- | --- | --- | --- | --- |")
for name, r in seed42():
    ti = r.get("test_intervals")
    if not ti:
        continue
    g = ti["aiq_minus_hull"]
    kept = " / ".join(f"{100 * t['kept'][0]:.1f}–{100 * t['kept'][1]:.1f}% ({100 * t['kept_at_least_target_less_one_point']:.0f}%)" for t in ti["targets"])
    t95 = next(t for t in ti["targets"] if abs(t["target"] - 0.95) < 1e-9)
    c = t95["cost_over_cheapest_single"]
    cost = f"{c[0]:.2f}–{c[1]:.2f}×" if c else "—"
    a = ti["apgr"]
    print(f"| {name} | {r['aiq'] - r['zero_router_aiq']:+.4f}, {g[0]:+.4f} to {g[1]:+.4f} ({100 * ti['aiq_at_least_hull']:.0f}%) | {kept} | {cost} | {a[0]:.3f}–{a[1]:.3f} |")

print()
print("Reliability (seed 42): predicted quality bins → measured quality (pairs)")
for name, r in seed42():
    cells = ", ".join(f"{p:.2f}→{q:.2f} ({n})" for p, q, n in r["calibration"]["reliability"])
    print(f"- {name}: {cells}")

print()
print("Curve points below random routing at the same reference share (a random mix of the cheap and the reference model; every seed):")
for name in SETS:
    runs = load(name)
    if not runs:
        continue
    below, points, worst = 0, 0, 0.0
    for r in runs:
        single = {m["model"]: m["quality"] for m in r["single_models"]}
        qs, qw = single[r["reference_model"]], single[r["cheap_model"]]
        for p in r["curve"]:
            gap = qw + p["reference_share"] * (qs - qw) - p["quality"]
            points += 1
            if gap > 1e-9:
                below += 1
                worst = max(worst, gap)
    print(f"- {name}: {below} of {points}" + (f" (at most {worst:.4f} below)" if below else ""))
