#!/usr/bin/env bash
# End-to-end checks of ternctl export and tern-trainer's safetensors support
# on Fashion-MNIST (label model_io_e2e; one mode per ctest test):
#   model_io_e2e.sh train         TRAINER TERNCTL WORK
#       trains small ResNet-20s (HLA per-channel, TTQ per-tensor: its
#       positive and negative scales differ, FP; and a quarter-width HLA
#       ResNet-18 for the ImageNet-style stem) on 2,048 images and writes each
#       one's logits on the first 1,000 test images (tern-trainer --evaluate
#       --logits-out) and its ONNX / safetensors exports (the fixture)
#   model_io_e2e.sh onnx-checker  TRAINER TERNCTL WORK   onnx.checker.check_model (full check)
#   model_io_e2e.sh onnx-runtime  TRAINER TERNCTL WORK NPM_DIR
#       ONNX Runtime's logits within 1e-4 of tern-trainer's, top-1 identical
#       (exit 77 without node / onnxruntime-node)
#   model_io_e2e.sh safetensors   TRAINER TERNCTL WORK
#       the FP model as safetensors, under tern's names and renamed to
#       torchvision's by Python, evaluated by tern-trainer: the same accuracy
#       (and logits) as its .tern; a file that does not fit is refused
#   model_io_e2e.sh refusals      TRAINER TERNCTL WORK
#       a model with 10 classes on a 5-class data set; a detection model; a
#       damaged .tern: refused, naming why, nothing written
set -euo pipefail
mode="$1" trainer="$2" ternctl="$3" work="$4"
here="$(cd "$(dirname "$0")" && pwd)"
data=/usr/share/datasets/fashion-mnist
count=1000
py=/usr/bin/python3  # Debian's python3-onnx (scripts/tools.list)

fail() { echo "FAIL: $*"; exit 1; }
[[ -x "$trainer" && -x "$ternctl" ]] || fail "tern-trainer or ternctl not built"

spec() {  # spec NAME METHOD GRANULARITY [DATA [ARCH [WIDTH]]]
  cat <<JSON
{"name": "$1", "model": {"arch": "${5:-resnet20}", "width_multiplier": ${6:-1}},
 "dataset": {"kind": "DATASET_IDX", "path": "${4:-$data}", "max_train_examples": 2048,
             "max_eval_examples": $count, "augment": false},
 "quantization": {"method": "$2", "granularity": "$3"},
 "optimization": {"epochs": 1, "batch_size": 64, "lr": 0.1, "seed": 1}}
JSON
}

models=(hla ttq fp r18)
case "$mode" in
  train)
    [[ -f "$data/t10k-images-idx3-ubyte.gz" ]] || fail "$data is missing (Debian: dataset-fashion-mnist)"
    rm -rf "$work" && mkdir -p "$work"
    spec hla METHOD_HLA GRANULARITY_CHANNEL > "$work/hla.json"
    spec ttq METHOD_TTQ GRANULARITY_TENSOR > "$work/ttq.json"
    spec fp METHOD_FP GRANULARITY_TENSOR > "$work/fp.json"
    spec r18 METHOD_HLA GRANULARITY_CHANNEL "$data" resnet18 0.25 > "$work/r18.json"
    for m in "${models[@]}"; do
      "$trainer" --spec "$work/$m.json" --workdir "$work/$m" > "$work/$m.train.out" 2> "$work/$m.train.log" ||
        { tail -5 "$work/$m.train.log"; fail "training $m"; }
      "$trainer" --spec "$work/$m.json" --evaluate "$work/$m/model.tern" \
        --logits-out "$work/$m.logits.json" > "$work/$m.evaluated.out" 2> "$work/$m.evaluate.log" ||
        { cat "$work/$m.evaluated.out"; fail "evaluating $m"; }
      "$ternctl" export "$work/$m/model.tern" --format onnx -o "$work/$m.onnx"
      "$ternctl" export "$work/$m/model.tern" --format onnx --float -o "$work/$m.float.onnx"
      "$ternctl" export "$work/$m/model.tern" --format safetensors -o "$work/$m.safetensors"
      "$ternctl" export "$work/$m/model.tern" --format safetensors --codes -o "$work/$m.codes.safetensors"
    done
    echo "size on disk (bytes), resnet20 (r18: resnet18 x0.25) on Fashion-MNIST:"
    for m in "${models[@]}"; do
      printf '  %-4s .tern %8d | onnx int8 %8d | onnx float %8d | safetensors %8d | safetensors codes %8d\n' \
        "$m" "$(stat -c %s "$work/$m/model.tern")" "$(stat -c %s "$work/$m.onnx")" \
        "$(stat -c %s "$work/$m.float.onnx")" "$(stat -c %s "$work/$m.safetensors")" \
        "$(stat -c %s "$work/$m.codes.safetensors")"
    done
    ;;

  onnx-checker)
    for m in hla ttq r18; do
      for f in "$work/$m.onnx" "$work/$m.float.onnx"; do
        "$py" -c 'import onnx, sys; m = onnx.load(sys.argv[1]); onnx.checker.check_model(m, full_check=True); print(sys.argv[1].rsplit("/", 1)[1] + ": ONNX checker passed, opset", m.opset_import[0].version)' "$f"
      done
    done
    # The checker must reject a broken graph: a node reading a value nothing defines.
    "$py" - "$work/hla.onnx" <<'PY' && fail "the ONNX checker accepted a broken graph"
import onnx, sys
m = onnx.load(sys.argv[1])
m.graph.node[5].input[0] = "no_such_value"
onnx.checker.check_model(m, full_check=True)
PY
    echo "the ONNX checker rejects a graph with an undefined input, as it must"
    # int8 codes: about 4x smaller than float32.
    for m in hla ttq; do
      int8=$(stat -c %s "$work/$m.onnx") float=$(stat -c %s "$work/$m.float.onnx")
      (( float > 3 * int8 )) || fail "$m: int8 ONNX $int8 bytes is not ~4x smaller than float $float"
    done
    ;;

  onnx-runtime)
    npm_dir="$5"
    command -v node >/dev/null || { echo "SKIP: node is not installed"; exit 77; }
    [[ -d "$npm_dir/node_modules/onnxruntime-node" ]] ||
      { echo "SKIP: onnxruntime-node is not installed in $npm_dir (ModelIoNpmInstall)"; exit 77; }
    for f in hla.onnx hla.float.onnx ttq.onnx ttq.float.onnx fp.onnx r18.onnx; do
      m="${f%%.*}"
      node "$here/onnx_runtime_check.mjs" "$npm_dir" "$work/$f" "$work/$m.logits.json" \
        "$data/t10k-images-idx3-ubyte.gz" "$count" || fail "$f disagrees with tern-trainer"
    done
    ;;

  safetensors)
    top1() { jq -r 'select(.event == "evaluated") | .metrics.top1' "$1"; }
    want="$(top1 "$work/fp.evaluated.out")"
    [[ -n "$want" ]] || fail "no evaluated event for the FP .tern"
    # tern's names, then torchvision's (written by Python with struct + json).
    "$py" - "$work/fp.safetensors" "$work/fp.torchvision.safetensors" <<'PY'
import json, re, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
stages = [3, 3, 3]  # resnet20
def rename(name):
    m = re.match(r"blocks\.(\d+)\.(.*)", name)
    if not m:
        return name
    i, rest = int(m.group(1)), m.group(2)
    stage = 0
    while i >= stages[stage]:
        i -= stages[stage]; stage += 1
    rest = rest.replace("shortcut_conv.", "downsample.0.").replace("shortcut_bn.", "downsample.1.")
    return "module.layer%d.%d.%s" % (stage + 1, i, rest)
out_header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
for name, info in sorted(header.items()):
    if name == "__metadata__":
        continue
    b, e = info["data_offsets"]
    out_header[rename(name)] = dict(info, data_offsets=[offset, offset + e - b])
    chunks.append(data[b:e]); offset += e - b
text = json.dumps(out_header).encode()
text += b" " * (-len(text) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(text)) + text + b"".join(chunks))
assert any(k.startswith("module.layer3.0.downsample.0.") for k in out_header)
PY
    for f in fp.safetensors fp.torchvision.safetensors; do
      "$trainer" --spec "$work/fp.json" --evaluate "$work/$f" --logits-out "$work/$f.logits.json" \
        > "$work/$f.out" 2> "$work/$f.log" || { cat "$work/$f.out"; fail "evaluating $f"; }
      got="$(top1 "$work/$f.out")"
      [[ "$got" == "$want" ]] || fail "$f: top-1 $got, the .tern's $want"
      diff -q <(jq -c .logits "$work/$f.logits.json") <(jq -c .logits "$work/fp.logits.json") >/dev/null ||
        fail "$f: logits differ from the .tern's"
      echo "$f: top-1 $got as the .tern's, same logits on $count images; init_from report: $(
        jq -c 'select(.event == "evaluated") | .init_from | {format, names, loaded, skipped, unused}' "$work/$f.out")"
    done
    # The name mapping as the spec says: model.init_from_names "as_stored" finds no
    # torchvision name in the model (refused), "torchvision" maps them.
    jq '.model.init_from_names = "as_stored"' "$work/fp.json" > "$work/fp-as-stored.json"
    jq '.model.init_from_names = "torchvision"' "$work/fp.json" > "$work/fp-torchvision.json"
    if "$trainer" --spec "$work/fp-as-stored.json" --evaluate "$work/fp.torchvision.safetensors" \
        > "$work/as-stored.out" 2> "$work/as-stored.log"; then
      fail "torchvision names loaded with model.init_from_names as_stored"
    fi
    echo "init_from_names as_stored: $(jq -r 'select(.event == "failed") | .reason' "$work/as-stored.out" | cut -c1-160)"
    "$trainer" --spec "$work/fp-torchvision.json" --evaluate "$work/fp.torchvision.safetensors" \
      > "$work/torchvision.out" 2> "$work/torchvision.log" || fail "init_from_names torchvision"
    [[ "$(top1 "$work/torchvision.out")" == "$want" ]] || fail "init_from_names torchvision: other top-1"
    # A HLA model's codes file does not fill the FP model: refused, naming what is missing.
    if "$trainer" --spec "$work/fp.json" --evaluate "$work/hla.codes.safetensors" > "$work/codes.out" 2> "$work/codes.log"; then
      fail "a codes-only safetensors file was evaluated as if it held the weights"
    fi
    grep -q 'does not fill the spec' "$work/codes.out" || { cat "$work/codes.out"; fail "unclear refusal"; }
    echo "a codes-only safetensors file is refused: $(jq -r 'select(.event == "failed") | .reason' "$work/codes.out" | cut -c1-160)"
    ;;

  refusals)
    # 5 classes: the Fashion-MNIST images with labels 0-4.
    five="$work/five-classes" && mkdir -p "$five"
    "$py" - "$data" "$five" <<'PY'
import gzip, struct, sys
src, dst = sys.argv[1], sys.argv[2]
for split in ("train", "t10k"):
    images = gzip.open("%s/%s-images-idx3-ubyte.gz" % (src, split)).read()
    labels = gzip.open("%s/%s-labels-idx1-ubyte.gz" % (src, split)).read()
    n, rows, cols = struct.unpack(">III", images[4:16])
    keep = [i for i in range(n) if labels[8 + i] < 5][:2000]
    size = rows * cols
    with gzip.open("%s/%s-images-idx3-ubyte.gz" % (dst, split), "wb") as f:
        f.write(struct.pack(">IIII", 0x803, len(keep), rows, cols))
        f.write(b"".join(images[16 + i * size:16 + (i + 1) * size] for i in keep))
    with gzip.open("%s/%s-labels-idx1-ubyte.gz" % (dst, split), "wb") as f:
        f.write(struct.pack(">II", 0x801, len(keep)) + bytes(labels[8 + i] for i in keep))
PY
    spec five METHOD_HLA GRANULARITY_CHANNEL "$five" > "$work/five.json"
    status=0
    "$trainer" --spec "$work/five.json" --evaluate "$work/hla/model.tern" > "$work/five.out" 2> "$work/five.log" || status=$?
    [[ $status -eq 1 ]] || { cat "$work/five.out"; fail "evaluating a 10-class model on 5 classes: exit $status"; }
    reason="$(jq -r 'select(.event == "failed") | .reason' "$work/five.out")"
    [[ "$reason" == *"has 10 classes; the spec's dataset has 5"* ]] || fail "unclear refusal: $reason"
    echo "tern-trainer --evaluate refuses: $reason"
    if "$trainer" --spec "$work/five.json" --evaluate "$work/fp.safetensors" > "$work/five-st.out" 2> "$work/five-st.log"; then
      fail "10-class safetensors weights evaluated on 5 classes"
    fi
    grep -q 'fc.weight (shape \[10, 64\] in source, \[5, 64\] in model)' "$work/five-st.out" ||
      { cat "$work/five-st.out"; fail "the refusal does not name both class counts"; }
    echo "and safetensors weights: $(jq -r 'select(.event == "failed") | .reason' "$work/five-st.out" | cut -c1-200)"

    # ternctl export: a damaged .tern, a detection model, bad options; no output file left.
    head -c 1000 "$work/hla/model.tern" > "$work/truncated.tern"
    check_refused() {  # check_refused WANT_EXIT WANT_TEXT ARGS...
      local want_exit="$1" want_text="$2" out="$work/refused.onnx" status=0
      shift 2
      rm -f "$out"
      "$ternctl" export "$@" -o "$out" > "$work/export.out" 2>&1 || status=$?
      [[ $status -eq $want_exit ]] || { cat "$work/export.out"; fail "ternctl export $*: exit $status, want $want_exit"; }
      grep -q -- "$want_text" "$work/export.out" || { cat "$work/export.out"; fail "ternctl export $*: unclear message"; }
      [[ ! -e "$out" ]] || fail "ternctl export $* left $out behind"
      echo "ternctl export $*: exit $status, $(head -1 "$work/export.out")"
    }
    check_refused 5 "truncated" "$work/truncated.tern" --format onnx
    check_refused 3 "does not exist\|No such file\|not found" "$work/missing.tern" --format onnx
    check_refused 2 "must be onnx or safetensors" "$work/hla/model.tern" --format tflite
    check_refused 2 "is for --format onnx" "$work/hla/model.tern" --format safetensors --float
    # A detection .tern: the HLA artifact relabelled as one (its header says the task).
    "$py" - "$work/hla/model.tern" "$work/detection.tern" <<'PY'
import json, struct, sys, zlib
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<I", raw[8:12])[0]
header = json.loads(raw[20:20 + n])
header["metadata"]["task"] = "detection"
text = json.dumps(header).encode()
body = raw[:8] + struct.pack("<I", len(text)) + raw[12:20] + text + raw[20 + n:-4]
open(sys.argv[2], "wb").write(body + struct.pack("<I", zlib.crc32(body)))
PY
    check_refused 5 "detection models is not supported yet" "$work/detection.tern" --format onnx
    ;;

  *) fail "unknown mode $mode" ;;
esac
