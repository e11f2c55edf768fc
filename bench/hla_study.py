#!/usr/bin/env python3
"""The HLA recipe study's table and verdict (bench/hla_study.sh runs the grid).

  bench/hla_study.py csv WORKDIR > study.csv     one row per finished run
  bench/hla_study.py analyze study.csv           paired differences and verdicts

Standard library only.

DECISION RULE (fixed before any run: HLA.md section 7, issue 33; do not edit it
after seeing results, add a dated note instead):

  * Metric: top-1 of the ternary model on the validation split (images held out
    of the training set: dataset.val_fraction, the same images for every method
    given the seed) at the FINAL epoch. Never a best epoch.
  * Pairing: runs are compared seed by seed; a pair counts only if both runs
    report the same init_digest and data_digest (same initial model and batch
    order). A config with a missing or unpaired seed gets no verdict.
  * Selection: within each method (HLA: over lambda and switch point), the
    config with the highest mean validation top-1 over the seeds.
  * Verdict of A against B, d_s = val_A(s) - val_B(s) in points, over n >= 3
    seeds: A WINS if every d_s > 0 and mean(d) > max(0.3, sd(d)) (sd: sample
    standard deviation of the d_s); A LOSES by the mirror rule; otherwise TIE.
    With n < 3 seeds: NO VERDICT (the CPU smoke run has 2 seeds on purpose).
  * Comparisons: the selected HLA config against the selected config of every
    other method of the grid; and, at every switch point, each HLA lambda > 0
    against lambda = 0 (the regularizer's own effect, the FP-first schedule
    held fixed).
  * Test top-1 (of the re-loaded .tern, final epoch) is printed for the selected
    config of each method only, and decides nothing.

  Added 2026-12-07, after the first CPU screening's fine-tuning grid: its
  lambda = 0 config at switch point 0 is the method hla_no_regularizer (HLA
  with the regularizer off has no FP phase), which the comparisons above did
  not pair with hla-l1e-1-s0 because the method names differ. They are now
  paired as lambda > 0 against lambda = 0 at switch 0; the rule is unchanged.

  Added 2026-12-07, before any detection run: detection grids (hla_study.sh
  --task detection) use AP50 (COCO AP at IoU 0.50, in points) in place of
  top-1 everywhere above: of the ternary model on the validation split (images
  held out of the training annotations, dataset.val_fraction) at the final
  epoch for the verdicts, of the re-loaded .tern on the val annotations as the
  reported test figure. The rule is otherwise unchanged.
"""
import csv
import glob
import json
import math
import os
import statistics
import sys

# The metric columns (val, test, switch_*) hold `metric`: top1 for
# classification, ap50 for detection, in percent.
COLUMNS = ["grid", "config", "method", "lambda", "switch", "seed", "epochs", "metric", "val_fp",
           "val", "test", "init_digest", "data_digest", "switch_step", "switch_fp",
           "switch_ternary", "switch_ternary_bn", "switch_seconds", "phase1_cos_first",
           "phase1_cos_last", "phase1_reg_grad_share", "diag_seconds_per_sample", "step_seconds",
           "wall_seconds"]
# Files written before the metric was generic named the columns after top-1.
OLD_COLUMNS = {"val_fp_top1": "val_fp", "val_top1": "val", "test_top1": "test",
               "switch_fp_top1": "switch_fp", "switch_ternary_top1": "switch_ternary",
               "switch_ternary_bn_top1": "switch_ternary_bn"}
MARGIN = 0.3  # points
MIN_SEEDS = 3


def events(path):
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                yield json.loads(line)


def score(metrics):
    """The metric of one evaluation in percent: top-1, or AP50 for detection."""
    if not metrics:
        return ""
    value = metrics["top1"] if "top1" in metrics else metrics.get("ap50")
    return "" if value is None else f"{100 * value:.2f}"


def run_row(run_dir):
    with open(os.path.join(run_dir, "run.json")) as f:
        row = dict(json.load(f))
    phase1, diag, steps = [], [], []
    for e in events(os.path.join(run_dir, "events.jsonl")):
        kind = e.get("event")
        if kind == "started":
            row["init_digest"] = e.get("init_digest") or ""
            row["data_digest"] = e.get("data_digest") or ""
        elif kind == "progress":
            steps.append(e.get("step_seconds", 0))
            r = e.get("regularizer")
            if r:
                diag.append(r["seconds"])
                if e.get("phase") == 1:
                    phase1.append(r)
        elif kind == "phase_switch":
            row.update(switch_step=e["step"], switch_fp=score(e["fp"]),
                       switch_ternary=score(e["ternary"]),
                       switch_ternary_bn=score(e.get("ternary_bn")),
                       switch_seconds=f"{e['seconds']:.2f}")
        elif kind == "finished":
            val = e.get("val", {})
            ternary_val = val.get("fp") if row["method"] == "fp" else val.get("ternary")
            row.update(metric="top1" if "top1" in e["artifact"] else "ap50",
                       val_fp=score(val.get("fp")), val=score(ternary_val),
                       test=score(e["artifact"]), wall_seconds=f"{e['wall_seconds']:.1f}")
    if "test" not in row:
        return None  # unfinished
    if phase1:
        row.update(phase1_cos_first=f"{phase1[0]['cos_wt']:.4f}",
                   phase1_cos_last=f"{phase1[-1]['cos_wt']:.4f}",
                   phase1_reg_grad_share=f"{statistics.mean(r['reg_grad_share'] for r in phase1):.4f}")
    if diag:
        row["diag_seconds_per_sample"] = f"{statistics.mean(diag):.4f}"
    if steps:
        row["step_seconds"] = f"{statistics.mean(steps):.4f}"
    return row


def write_csv(work):
    out = csv.DictWriter(sys.stdout, COLUMNS, restval="")
    out.writeheader()
    for run_dir in sorted(glob.glob(os.path.join(work, "*", "run.json"))):
        row = run_row(os.path.dirname(run_dir))
        if row is None:
            print(f"hla_study.py: {os.path.dirname(run_dir)} did not finish", file=sys.stderr)
            continue
        out.writerow({k: row.get(k, "") for k in COLUMNS})


def verdict(diffs):
    if len(diffs) < MIN_SEEDS:
        return f"NO VERDICT ({len(diffs)} seeds < {MIN_SEEDS})"
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    bar = max(MARGIN, sd)
    if all(d > 0 for d in diffs) and mean > bar:
        return "WINS"
    if all(d < 0 for d in diffs) and -mean > bar:
        return "LOSES"
    return "TIE"


def compare(name_a, runs_a, name_b, runs_b):
    """Prints the paired differences of the validation metric (a - b) and the verdict."""
    seeds = sorted(set(runs_a) & set(runs_b), key=int)
    unpaired = [s for s in seeds if (runs_a[s]["init_digest"], runs_a[s]["data_digest"])
                != (runs_b[s]["init_digest"], runs_b[s]["data_digest"])]
    missing = sorted(set(runs_a) ^ set(runs_b), key=int)
    diffs = [float(runs_a[s]["val"]) - float(runs_b[s]["val"]) for s in seeds]
    per_seed = ", ".join(f"s{s} {d:+.2f}" for s, d in zip(seeds, diffs))
    mean = statistics.mean(diffs) if diffs else math.nan
    sd = statistics.stdev(diffs) if len(diffs) > 1 else math.nan
    if unpaired or missing:
        result = f"NO VERDICT (unpaired seeds {unpaired}, missing seeds {missing})"
    else:
        result = verdict(diffs)
    print(f"  {name_a} vs {name_b}: {per_seed}; mean {mean:+.2f}, sd {sd:.2f}, "
          f"bar {max(MARGIN, sd if sd == sd else 0):.2f} -> {name_a} {result}")


def analyze(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for old, new in OLD_COLUMNS.items():
            if old in r:
                r[new] = r.pop(old)
        r.setdefault("metric", "top1")
    print("DECISION RULE" + __doc__.split("DECISION RULE")[1])
    for grid in sorted({r["grid"] for r in rows}):
        grid_rows = [r for r in rows if r["grid"] == grid and r["val"]]
        metric = "AP50" if grid_rows and grid_rows[0]["metric"] == "ap50" else "top-1"
        configs = {}
        for r in grid_rows:
            configs.setdefault(r["config"], {})[r["seed"]] = r
        print(f"== grid {grid}: validation {metric} (%), final epoch, mean ± sd over seeds")
        for name, runs in sorted(configs.items()):
            vals = [float(r["val"]) for r in runs.values()]
            sd = f" ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else ""
            per_seed = ", ".join(f"s{s} {runs[s]['val']}" for s in sorted(runs, key=int))
            extra = ""
            first = next(iter(runs.values()))
            if first["switch_step"]:
                def mean_of(key, digits):
                    vals = [float(r[key]) for r in runs.values() if r[key]]
                    return f"{statistics.mean(vals):.{digits}f}" if vals else "n/a"
                extra = ("; at the switch: FP {} -> ternary {} -> after BN {}; "
                         "phase-1 cos(W,T) {} -> {}, reg. share of grad {}").format(
                    *(mean_of(k, 2) for k in ("switch_fp", "switch_ternary",
                                              "switch_ternary_bn")),
                    *(mean_of(k, 3) for k in ("phase1_cos_first", "phase1_cos_last",
                                              "phase1_reg_grad_share")))
            print(f"  {name}: {statistics.mean(vals):.2f}{sd} ({per_seed}){extra}")
        by_method = {}
        for name, runs in configs.items():
            by_method.setdefault(next(iter(runs.values()))["method"], []).append(name)
        selected = {m: max(names, key=lambda n: statistics.mean(
            float(r["val"]) for r in configs[n].values())) for m, names in by_method.items()}
        print(f"  selected (best mean validation {metric} per method): " +
              ", ".join(f"{m}: {n}" for m, n in sorted(selected.items())))
        print(f"  verdicts (paired by seed, validation {metric}, points):")
        if "hla" in selected:
            best = selected["hla"]
            for m, n in sorted(selected.items()):
                if m != "hla":
                    compare(best, configs[best], n, configs[n])
        hla = {n: next(iter(configs[n].values())) for n in configs
               if next(iter(configs[n].values()))["method"] == "hla"}
        # lambda = 0 baselines by switch point; hla_no_regularizer is lambda 0
        # at switch 0 (no FP phase).
        baselines = {float(r["switch"]): n for n, r in hla.items() if float(r["lambda"]) == 0}
        for n in configs:
            if next(iter(configs[n].values()))["method"] == "hla_no_regularizer":
                baselines.setdefault(0.0, n)
        for n, r in sorted(hla.items()):
            base = baselines.get(float(r["switch"]))
            if float(r["lambda"]) > 0 and base:
                compare(n, configs[n], base, configs[base])
        print(f"  test {metric} (%) of the selected configs, final epoch (reported, decides "
              "nothing):")
        for m, n in sorted(selected.items()):
            runs = configs[n]
            vals = [float(r["test"]) for r in runs.values()]
            sd = f" ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else ""
            print(f"    {n}: {statistics.mean(vals):.2f}{sd}")


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("csv", "analyze"):
        print(__doc__.split("DECISION RULE")[0], file=sys.stderr)
        sys.exit(2)
    if sys.argv[1] == "csv":
        write_csv(sys.argv[2])
    else:
        analyze(sys.argv[2])


if __name__ == "__main__":
    main()
