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

export function accuracy(job) {
  const r = job.result || {};
  const m = job.latestMetrics || {};
  const top1 = r.ternaryTop1 ?? r.fpTop1 ?? m.ternaryTop1 ?? m.fpTop1;
  return percent(top1);
}

export function progressText(job) {
  const p = job.progress;
  if (!p || !p.epochs) return '';
  return `epoch ${p.epoch || 0}/${p.epochs}` +
         (p.totalSteps ? ` (${Math.round(100 * (p.step || 0) / p.totalSteps)}%)` : '');
}
