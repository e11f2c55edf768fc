// Unit tests of the web console's display helpers (web/src/format.js) on the
// JSON ternd's API sends: proto3 JSON names, absent defaults, classification
// top-1 and detection AP50. Run by ctest (WebConsoleFormat) with node --test.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { accuracy, isDetection, metricName, percent, score, stateName } from '../../web/src/format.js';

const detectionEpoch = {
  epoch: 2, evalSplit: 'val',
  fpDetection: { ap: 0.21, ap50: 0.47 }, ternaryDetection: { ap: 0.2, ap50: 0.451 },
};

test('classification metrics read top-1', () => {
  const m = { epoch: 1, fpTop1: 0.9, ternaryTop1: 0.88, trainTop1: 0.85 };
  assert.equal(isDetection(m), false);
  assert.equal(metricName(m), 'top-1');
  assert.deepEqual(['fp', 'ternary', 'train'].map(k => score(m, k)), [0.9, 0.88, 0.85]);
  assert.equal(score({}, 'ternary'), undefined);
});

test('detection metrics read AP50 of the *Detection fields', () => {
  assert.equal(isDetection(detectionEpoch), true);
  assert.equal(metricName(detectionEpoch), 'AP50');
  assert.equal(score(detectionEpoch, 'fp'), 0.47);
  assert.equal(score(detectionEpoch, 'ternary'), 0.451);
  assert.equal(score(detectionEpoch, 'train'), undefined);
  // A detection message whose AP is absent (no ground truth) is not detection yet.
  assert.equal(isDetection({ fpDetection: {} }), false);
  // JobResult's validation split and PhaseSwitch's re-estimated forward.
  const result = { ternaryDetection: { ap: 0.2, ap50: 0.45 }, valTernaryDetection: { ap: 0.3, ap50: 0.6 } };
  assert.equal(score(result, 'valTernary'), 0.6);
  assert.equal(score(result, 'valFp'), undefined);
  assert.equal(score({ fpTop1: 0.8, ternaryBnTop1: 0.7 }, 'ternaryBn'), 0.7);
  assert.equal(score({ fpDetection: { ap: 0.1, ap50: 0.5 }, ternaryBnDetection: { ap: 0.1, ap50: 0.4 } },
                     'ternaryBn'), 0.4);
});

test('the job list shows the result, else the latest epoch, as top-1 or AP50', () => {
  assert.equal(accuracy({ result: { fpTop1: 0.92, ternaryTop1: 0.912 } }), '91.20%');
  assert.equal(accuracy({ result: { fpTop1: 0.92 } }), '92.00%');  // METHOD_FP
  assert.equal(accuracy({ latestMetrics: { fpTop1: 0.5, ternaryTop1: 0.4 } }), '40.00%');
  assert.equal(accuracy({ result: { ternaryDetection: { ap: 0.2, ap50: 0.451 } } }), 'AP50 45.10%');
  assert.equal(accuracy({ latestMetrics: detectionEpoch }), 'AP50 45.10%');
  assert.equal(accuracy({}), '');
  assert.equal(percent(undefined), '');
  assert.equal(stateName('JOB_STATE_RUNNING'), 'RUNNING');
});
