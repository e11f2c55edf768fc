// Runs an exported ONNX classifier in ONNX Runtime (onnxruntime-node) on the
// first COUNT images of an IDX image file and compares its logits with the
// ones tern-trainer --evaluate --logits-out wrote for the same images.
//   node onnx_runtime_check.mjs NODE_MODULES MODEL.onnx LOGITS.json IMAGES.idx3-ubyte.gz COUNT
// Exit 0 when every logit is within 1e-4 and every top-1 class is the same;
// 1 otherwise, printing the worst difference. The comparison is first run on
// logits moved by 2e-4, which it must reject (a check that can fail).
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import path from 'node:path';

const [modules, modelPath, logitsPath, imagesPath, countText] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(modules), 'node_modules', 'x.js'));
const ort = require('onnxruntime-node');
const kTolerance = 1e-4;

function readIdxImages(file, count) {
  let bytes = readFileSync(file);
  if (file.endsWith('.gz')) bytes = gunzipSync(bytes);
  const magic = bytes.readUInt32BE(0);
  if (magic !== 0x803) throw new Error(`${file}: not an IDX image file (magic ${magic})`);
  const [n, rows, cols] = [bytes.readUInt32BE(4), bytes.readUInt32BE(8), bytes.readUInt32BE(12)];
  if (count > n) throw new Error(`${file} holds ${n} images, fewer than ${count}`);
  return { pixels: new Uint8Array(bytes.subarray(16, 16 + count * rows * cols)), rows, cols };
}

function argmax(row) {
  let best = 0;
  for (let i = 1; i < row.length; ++i) if (row[i] > row[best]) best = i;
  return best;
}

// { maxDiff, top1Mismatches } between ONNX Runtime's logits [count, classes] and the trainer's.
function compare(ortLogits, classes, want) {
  let maxDiff = 0, top1Mismatches = 0;
  want.forEach((row, i) => {
    const got = Array.from(ortLogits.subarray(i * classes, (i + 1) * classes));
    if (row.length !== classes) throw new Error(`row ${i}: ${row.length} logits, ONNX ${classes}`);
    row.forEach((v, c) => { maxDiff = Math.max(maxDiff, Math.abs(v - got[c])); });
    if (argmax(row) !== argmax(got)) ++top1Mismatches;
  });
  return { maxDiff, top1Mismatches, ok: maxDiff <= kTolerance && top1Mismatches === 0 };
}

const count = Number(countText);
const trainer = JSON.parse(readFileSync(logitsPath, 'utf8'));
if (trainer.logits.length !== count) {
  throw new Error(`${logitsPath} has ${trainer.logits.length} rows, expected ${count}`);
}
const { pixels, rows, cols } = readIdxImages(imagesPath, count);
const session = await ort.InferenceSession.create(modelPath);
const input = new ort.Tensor('uint8', pixels, [count, 1, rows, cols]);
const result = await session.run({ pixels: input });
const logits = result.logits;
const classes = logits.dims[1];
if (logits.dims[0] !== count) throw new Error(`ONNX returned ${logits.dims} logits`);

const moved = trainer.logits.map((row) => row.map((v) => v + 2 * kTolerance));
if (compare(logits.data, classes, moved).ok) {
  console.error('FAIL: the comparison accepted logits moved by 2e-4');
  process.exit(1);
}
const r = compare(logits.data, classes, trainer.logits);
let correct = 0;
trainer.labels.forEach((y, i) => {
  if (argmax(Array.from(logits.data.subarray(i * classes, (i + 1) * classes))) === y) ++correct;
});
console.log(`${path.basename(modelPath)}: ${count} images, max |logit difference| ${r.maxDiff.toExponential(2)} ` +
            `(limit ${kTolerance}), top-1 differs on ${r.top1Mismatches}, ONNX Runtime top-1 ${(100 * correct / count).toFixed(2)}%`);
process.exit(r.ok ? 0 : 1);
