#!/usr/bin/env python3
"""Cross-checks tern-coco-eval against a plain-Python reference of COCOeval.

usage: coco_eval_reference.py TERN_SYNTH_COCO TERN_COCO_EVAL WORKDIR
(WORKDIR is removed and made again.)

The reference follows pycocotools' COCOeval (iouType "bbox") step by step:
evaluateImg (detections sorted by score, stable, cut to maxDets[-1]; ground
truth ignored for crowd or area out of range and sorted non-ignored first;
greedy matching from min(t, 1 - 1e-10) upwards; crowd IoU over the
detection's area; unmatched detections out of range ignored), accumulate
(per category and area range the first maxDet detections of every image,
merged by score with a stable sort; recall = the last cumulative recall;
precision tp / (tp + fp + eps), made monotone, read at np.linspace(0, 1,
101) with searchsorted left) and summarize (means over values > -1). The
IoU and recall thresholds are computed as numpy's linspace does (i * step +
start), which decides ties such as recall 7/20 against 0.35.

pycocotools itself cannot be installed here; this is an independent second
implementation. It writes a synthetic set with tern-synth-coco, turns a few
objects into crowd regions and pushes a few boxes across the image edge,
makes a results file (jittered boxes, duplicates, false positives, tied
scores, more than 10 detections in some images), and requires the 12
numbers of `tern-coco-eval --json` to match the reference to 1e-9 for
maxDets 1, 10 and 100. Exits 1 with the differences otherwise.
"""
import bisect
import json
import os
import random
import shutil
import subprocess
import sys

AREAS = {"all": (0, 1e10), "small": (0, 32 ** 2), "medium": (32 ** 2, 96 ** 2),
         "large": (96 ** 2, 1e10)}
EPS = 2.220446049250313e-16  # np.spacing(1)


def linspace(start, stop, n):
    step = (stop - start) / (n - 1)
    out = [i * step + start for i in range(n)]
    out[-1] = stop
    return out


IOU_THRS = linspace(0.5, 0.95, 10)
REC_THRS = linspace(0.0, 1.0, 101)


def iou(d, g, crowd):
    w = min(d[0] + d[2], g[0] + g[2]) - max(d[0], g[0])
    h = min(d[1] + d[3], g[1] + g[3]) - max(d[1], g[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = d[2] * d[3] if crowd else d[2] * d[3] + g[2] * g[3] - inter
    return inter / union if union > 0 else 0.0


class Reference:
    def __init__(self, gt, dt, max_dets):
        self.imgs = sorted(i["id"] for i in gt["images"])
        self.cats = sorted(c["id"] for c in gt["categories"])
        self.max_dets = max_dets
        self.gts, self.dts = {}, {}
        for a in gt["annotations"]:
            self.gts.setdefault((a["image_id"], a["category_id"]), []).append(a)
        for d in dt:
            self.dts.setdefault((d["image_id"], d["category_id"]), []).append(d)
        self.cache = {}

    def evaluate_img(self, img, cat, area):
        key = (img, cat, area)
        if key in self.cache:
            return self.cache[key]
        lo, hi = AREAS[area]
        g = self.gts.get((img, cat), [])
        d = self.dts.get((img, cat), [])
        if not g and not d:
            self.cache[key] = None
            return None
        gt_ig = [1 if a.get("iscrowd", 0) or a["area"] < lo or a["area"] > hi else 0 for a in g]
        order = sorted(range(len(g)), key=lambda k: gt_ig[k])
        g = [g[k] for k in order]
        gt_ig = [gt_ig[k] for k in order]
        d = sorted(d, key=lambda x: -x["score"])[: self.max_dets[-1]]
        T = len(IOU_THRS)
        dtm = [[0] * len(d) for _ in range(T)]
        dt_ig = [[0] * len(d) for _ in range(T)]
        for t, thr in enumerate(IOU_THRS):
            gtm = [0] * len(g)
            for di, x in enumerate(d):
                best, m = min(thr, 1 - 1e-10), -1
                for gj, y in enumerate(g):
                    crowd = y.get("iscrowd", 0)
                    if gtm[gj] and not crowd:
                        continue
                    if m > -1 and gt_ig[m] == 0 and gt_ig[gj] == 1:
                        break
                    v = iou(x["bbox"], y["bbox"], crowd)
                    if v < best:
                        continue
                    best, m = v, gj
                if m == -1:
                    continue
                dt_ig[t][di] = gt_ig[m]
                dtm[t][di] = 1
                gtm[m] = 1
        for t in range(T):
            for di, x in enumerate(d):
                a = x["bbox"][2] * x["bbox"][3]
                if not dtm[t][di] and (a < lo or a > hi):
                    dt_ig[t][di] = 1
        out = {"scores": [x["score"] for x in d], "dtm": dtm, "dt_ig": dt_ig, "gt_ig": gt_ig}
        self.cache[key] = out
        return out

    def summarize(self, ap, area, max_det, t_only=None):
        values = []
        for cat in self.cats:
            E = [self.evaluate_img(i, cat, area) for i in self.imgs]
            E = [e for e in E if e is not None]
            if not E:
                continue
            npig = sum(1 for e in E for v in e["gt_ig"] if v == 0)
            if npig == 0:
                continue
            rows = [(e["scores"][k], e, k) for e in E for k in range(min(max_det, len(e["scores"])))]
            order = sorted(range(len(rows)), key=lambda r: -rows[r][0])
            for t in range(len(IOU_THRS)):
                if t_only is not None and t != t_only:
                    continue
                tp = fp = 0
                rc, pr = [], []
                for r in order:
                    _, e, k = rows[r]
                    if not e["dt_ig"][t][k]:
                        if e["dtm"][t][k]:
                            tp += 1
                        else:
                            fp += 1
                    rc.append(tp / npig)
                    pr.append(tp / (tp + fp + EPS))
                if not ap:
                    values.append(rc[-1] if rc else 0.0)
                    continue
                for i in range(len(pr) - 1, 0, -1):
                    pr[i - 1] = max(pr[i - 1], pr[i])
                q = 0.0
                for r in REC_THRS:
                    i = bisect.bisect_left(rc, r)
                    if i < len(pr):
                        q += pr[i]
                values.append(q / len(REC_THRS))
        return sum(values) / len(values) if values else None

    def stats(self):
        n = self.max_dets[-1]
        s = self.summarize
        return {"ap": s(1, "all", n), "ap50": s(1, "all", n, 0), "ap75": s(1, "all", n, 5),
                "ap_small": s(1, "small", n), "ap_medium": s(1, "medium", n),
                "ap_large": s(1, "large", n), "ar1": s(0, "all", self.max_dets[0]),
                "ar10": s(0, "all", self.max_dets[1]), "ar100": s(0, "all", n),
                "ar_small": s(0, "small", n), "ar_medium": s(0, "medium", n),
                "ar_large": s(0, "large", n)}


def make_files(synth, workdir):
    subprocess.run([synth, "--output", os.path.join(workdir, "shapes"), "--image-size", "160",
                    "--train-images", "1", "--val-images", "40", "--max-objects", "12",
                    "--seed", "3"], check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(workdir, "shapes", "annotations", "instances_val.json")) as f:
        gt = json.load(f)
    rng = random.Random(36)
    size = {i["id"]: (i["width"], i["height"]) for i in gt["images"]}
    for a in gt["annotations"]:
        u = rng.random()
        if u < 0.05:
            a["iscrowd"] = 1
        elif u < 0.12:  # across the right edge: scored as written
            a["bbox"][2] += size[a["image_id"]][0] - a["bbox"][0]
            a["area"] = a["bbox"][2] * a["bbox"][3]
    cats = [c["id"] for c in gt["categories"]]
    dt = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        for _ in range(rng.choice([0, 1, 1, 1, 2])):
            j = lambda s: rng.choice([0, 0, 0.5, 1, 2, 4]) * rng.choice([-1, 1]) * max(1, s / 16)
            dt.append({"image_id": a["image_id"], "category_id": a["category_id"],
                       "bbox": [x + j(w), y + j(h), max(0.5, w + j(w)), max(0.5, h + j(h))],
                       "score": round(rng.random(), 1)})
    for img in gt["images"]:
        n = rng.choice([0, 1, 3, 14])
        crowded = rng.choice(cats)  # 14 in one category: beyond maxDets 10
        for _ in range(n):
            w, h = rng.uniform(2, 120), rng.uniform(2, 120)
            dt.append({"image_id": img["id"],
                       "category_id": crowded if n == 14 else rng.choice(cats),
                       "bbox": [rng.uniform(0, 150), rng.uniform(0, 150), w, h],
                       "score": round(rng.random(), 2)})
    ann_path = os.path.join(workdir, "annotations.json")
    res_path = os.path.join(workdir, "results.json")
    with open(ann_path, "w") as f:
        json.dump(gt, f)
    with open(res_path, "w") as f:
        json.dump(dt, f)
    return gt, dt, ann_path, res_path


def main(argv):
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    synth, coco_eval, workdir = argv[1:]
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    gt, dt, ann_path, res_path = make_files(synth, workdir)
    failures = []
    for max_dets in (100, 10, 1):
        got = json.loads(subprocess.run(
            [coco_eval, "--annotations", ann_path, "--results", res_path,
             "--max-dets", str(max_dets), "--json"],
            check=True, stdout=subprocess.PIPE).stdout)
        want = Reference(gt, dt, [min(1, max_dets), min(10, max_dets), max_dets]).stats()
        for key, value in want.items():
            g = got[key]
            ok = (g is None) if value is None else (g is not None and abs(g - value) <= 1e-9)
            if not ok:
                failures.append(f"maxDets {max_dets} {key}: tern-coco-eval {g}, reference {value}")
        print(f"maxDets {max_dets}: " + ", ".join(
            f"{k} {v:.4f}" if v is not None else f"{k} -1" for k, v in want.items()))
    print(f"{len(gt['annotations'])} objects, {len(dt)} detections")
    for f in failures:
        print(f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
