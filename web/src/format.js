// Small display helpers; every value from the API may be absent (proto3 JSON
// omits defaults) or an enum name this console does not know yet.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== undefined && c !== null) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

// "JOB_STATE_RUNNING" -> "RUNNING"; unknown names and numbers shown as given.
export function stateName(state) {
  if (state === undefined || state === null) return 'UNSPECIFIED';
  return String(state).replace(/^(JOB_STATE_|AGENT_STATE_|METHOD_|DEVICE_KIND_)/, '');
}

export function percent(x) { return x === undefined || x === null ? '' : `${(100 * x).toFixed(2)}%`; }
export function num(x, digits = 4) {
  return x === undefined || x === null ? '' : Number(x).toPrecision(digits);
}
export function time(ts) { return ts ? new Date(ts).toLocaleString() : ''; }

export function reasonText(reason) {
  if (!reason || (!reason.code && !reason.message)) return '';
  return reason.code ? `${reason.code}: ${reason.message || ''}` : reason.message;
}

// Why a job waits (queued) or how it ended.
export function jobReason(job) {
  return reasonText(job.waitReason) || reasonText(job.stateReason);
}

// The quality figures of metrics (EpochMetrics, JobResult, PhaseSwitch):
// top-1, or AP50 for detection, whose messages carry `<key>Detection` fields
// and no top-1. key: 'fp', 'ternary', 'train' (EpochMetrics), 'valFp',
// 'valTernary' (JobResult's validation split), 'ternaryBn' (PhaseSwitch).
export function isDetection(m) {
  return Object.keys(m || {}).some(k => /Detection$/.test(k) && m[k]?.ap !== undefined);
}
export function metricName(m) { return isDetection(m) ? 'AP50' : 'top-1'; }
export function score(m, key) {
  return isDetection(m) ? m[`${key}Detection`]?.ap50 : m[`${key}Top1`];
}

// The job list's figure: the result's ternary (else FP) top-1 or AP50, else
// the latest epoch's.
export function accuracy(job) {
  for (const m of [job.result || {}, job.latestMetrics || {}]) {
    const value = score(m, 'ternary') ?? score(m, 'fp');
    if (value !== undefined && value !== null) {
      return isDetection(m) ? `AP50 ${percent(value)}` : percent(value);
    }
  }
  return '';
}

export function progressText(job) {
  const p = job.progress;
  if (!p || !p.epochs) return '';
  return `epoch ${p.epoch || 0}/${p.epochs}` +
         (p.totalSteps ? ` (${Math.round(100 * (p.step || 0) / p.totalSteps)}%)` : '');
}
