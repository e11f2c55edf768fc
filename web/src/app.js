// The tern web console: a job list, a job page and an agents page over
// ternd's JSON API, refreshed by polling. Routes: #/jobs, #/jobs/ID, #/agents.
import { AuthError, download, get, setToken, token } from './api.js';
import { HeatMap, LineChart } from './charts.js';
import { accuracy, el, isDetection, jobReason, metricName, num, percent, progressText, reasonText,
  score, stateName, time } from './format.js';

const main = document.getElementById('main');
const POLL_MS = 2000;
const TERMINAL = new Set(['SUCCEEDED', 'FAILED', 'CANCELLED']);
let timer = null;
let generation = 0;  // a page's polling stops once another page is shown

function poll(fn) {
  const mine = generation;
  const run = async () => {
    if (mine !== generation) return;
    let again = true;
    try { again = (await fn()) !== false; } catch (e) { again = handleError(e); }
    if (again && mine === generation) timer = setTimeout(run, POLL_MS);
  };
  run();
}

function handleError(e) {
  if (e instanceof AuthError) { showLogin(e.message); return false; }
  const banner = document.getElementById('error') || el('p', { id: 'error', class: 'error' });
  banner.textContent = e.message;
  main.prepend(banner);
  return true;
}

function showLogin(message) {
  generation++;
  document.getElementById('whoami').textContent = '';
  document.getElementById('logout').hidden = true;
  main.replaceChildren(document.getElementById('login-template').content.cloneNode(true));
  if (token()) document.getElementById('login-error').textContent = message;
  document.getElementById('login').addEventListener('submit', (event) => {
    event.preventDefault();
    setToken(document.getElementById('token').value.trim());
    route();
  });
}

async function showWhoAmI() {
  const me = await get('whoami');
  document.getElementById('whoami').textContent =
    `${me.name || 'anonymous'}${me.seesEveryJob ? ' (sees every job)' : ''}`;
  document.getElementById('logout').hidden = !token();
}

// ---- job list ----
function jobsPage(params) {
  const filters = {
    state: el('input', { id: 'filter-state', placeholder: 'state, e.g. RUNNING', value: params.get('state') || '' }),
    owner: el('input', { id: 'filter-owner', placeholder: 'owner', value: params.get('owner') || '' }),
    label: el('input', { id: 'filter-label', placeholder: 'label key=value', value: params.get('label') || '' }),
  };
  const apply = () => {
    const q = new URLSearchParams();
    for (const [k, input] of Object.entries(filters)) {
      for (const v of input.value.split(',').map(s => s.trim()).filter(Boolean)) q.append(k, v);
    }
    location.hash = `#/jobs?${q}`;
  };
  for (const input of Object.values(filters)) {
    input.addEventListener('keydown', (e) => { if (e.key === 'Enter') apply(); });
  }
  const body = el('tbody');
  main.replaceChildren(
    el('h2', {}, 'Jobs'),
    el('div', { class: 'filters' }, filters.state, filters.owner, filters.label,
       el('button', { onclick: apply }, 'Filter')),
    el('table', { id: 'jobs' },
       el('thead', {}, el('tr', {}, ...['id', 'name', 'state', 'reason', 'owner', 'method',
                                       'progress', 'accuracy', 'created'].map(h => el('th', {}, h)))),
       body));
  const query = new URLSearchParams();
  for (const [k, v] of params) if (v) for (const part of v.split(',')) query.append(k, part.trim());
  poll(async () => {
    const list = await get(`jobs?${query}`);
    document.getElementById('error')?.remove();
    const rows = (list.jobs || []).map(job => {
      const state = stateName(job.state);
      return el('tr', { 'data-job-id': job.id, 'data-state': state },
        el('td', {}, el('a', { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id)),
        el('td', {}, job.spec?.name || ''),
        el('td', {}, el('span', { class: `state state-${state}` }, state)),
        el('td', { class: 'reason' }, jobReason(job)),
        el('td', {}, job.spec?.owner || ''),
        el('td', {}, stateName(job.spec?.quantization?.method || 'METHOD_UNSPECIFIED')),
        el('td', {}, progressText(job)),
        el('td', {}, accuracy(job)),
        el('td', {}, time(job.createTime)));
    });
    body.replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { colspan: 9 }, 'no jobs'))]));
  });
}

// ---- job page ----
function sortedByX(points) {
  const byX = new Map();
  for (const p of points) byX.set(p.x, p);  // a resumed attempt replaces the older values
  return [...byX.values()].sort((a, b) => a.x - b.x);
}

function jobPage(jobId) {
  const summary = el('div', { id: 'job-summary', class: 'card' });
  const loss = new LineChart('Training loss', 'step', ['loss']);
  const acc = new LineChart('Accuracy (eval top-1; AP50 for detection)', 'epoch',
                            ['FP twin', 'ternary', 'train']);
  const lr = new LineChart('Learning rate and λ', 'step', ['lr', 'λ']);
  const stepTime = new LineChart('Step time (s)', 'step', ['step', 'all-reduce', 'data wait']);
  const heat = new HeatMap();
  loss.node.id = 'loss-chart';
  const events = el('tbody');
  const attempts = el('tbody');
  const result = el('div', { id: 'job-result', class: 'card' });
  main.replaceChildren(
    el('h2', {}, `Job ${jobId}`), summary,
    el('div', { class: 'charts' }, loss.node, acc.node, lr.node, stepTime.node), heat.node,
    el('h3', {}, 'Result'), result,
    el('h3', {}, 'Attempts (restart history)'),
    el('table', {}, el('thead', {}, el('tr', {}, ...['attempt', 'time', 'resumed from step', 'device',
                                                    'process group'].map(h => el('th', {}, h)))), attempts),
    el('h3', {}, 'Events'),
    el('table', { id: 'events' }, el('thead', {}, el('tr', {}, ...['#', 'time', 'attempt', 'kind', 'details']
                                                      .map(h => el('th', {}, h)))), events));

  const progress = [], epochs = [];
  let after = 0;
  const inspect = el('pre', { id: 'inspect' }, 'reading the artifact…');
  let inspected = false;
  const eventRow = (ev) => {
    let kind = 'other', details = '';
    if (ev.stateChange) {
      kind = 'state';
      details = `${stateName(ev.stateChange.fromState)} → ${stateName(ev.stateChange.toState)}` +
                (reasonText(ev.stateChange.reason) ? ` (${reasonText(ev.stateChange.reason)})` : '');
    } else if (ev.epochEnd) {
      const m = ev.epochEnd.metrics || {};
      kind = 'epoch end';
      details = `epoch ${m.epoch}: loss ${num(m.trainLoss)}, ${m.evalSplit || 'eval'} ${metricName(m)} ` +
                `FP ${percent(score(m, 'fp'))}, ternary ${percent(score(m, 'ternary'))}`;
    } else if (ev.phaseSwitch) {
      const p = ev.phaseSwitch;
      kind = 'switch';
      details = `to ternary at step ${p.step || 0}: ${p.evalSplit || 'eval'} ${metricName(p)} ` +
                `FP ${percent(score(p, 'fp'))}, ternary ${percent(score(p, 'ternary'))}` +
                (score(p, 'ternaryBn') !== undefined
                  ? `, after BatchNorm re-estimation ${percent(score(p, 'ternaryBn'))}` : '');
    } else if (ev.checkpointCommitted) {
      kind = 'checkpoint';
      details = `step ${ev.checkpointCommitted.step || 0}, epoch ${ev.checkpointCommitted.epoch || 0}`;
    } else if (ev.attemptStarted) {
      kind = 'attempt started';
      details = `resumed from step ${ev.attemptStarted.resumedFromStep || 0} on ${ev.attemptStarted.device || ''}`;
    } else if (ev.trainerFinished) {
      kind = 'trainer finished';
    } else if (ev.finished) {
      kind = 'finished';
      details = `${metricName(ev.finished)} ternary ${percent(score(ev.finished, 'ternary'))}`;
    } else {
      return null;  // progress samples are drawn, not listed
    }
    return el('tr', { 'data-kind': kind }, el('td', {}, ev.sequence), el('td', {}, time(ev.time)),
              el('td', {}, ev.attempt || ''), el('td', {}, kind), el('td', { class: 'reason' }, details));
  };

  poll(async () => {
    const job = await get(`jobs/${encodeURIComponent(jobId)}`);
    let page;
    do {
      page = await get(`jobs/${encodeURIComponent(jobId)}/events?after=${after}`);
      for (const ev of page.events || []) {
        after = Math.max(after, Number(ev.sequence));
        if (ev.progress) progress.push({ x: ev.progress.step || 0, ...ev.progress });
        if (ev.epochEnd) {
          epochs.push({ x: ev.epochEnd.metrics?.epoch || 0, ...(ev.epochEnd.metrics || {}),
                        layers: ev.epochEnd.layers || [] });
        }
        if (ev.attemptStarted) {
          const a = ev.attemptStarted;
          attempts.append(el('tr', {}, el('td', {}, ev.attempt), el('td', {}, time(ev.time)),
                             el('td', {}, a.resumedFromStep || 0), el('td', {}, a.device || ''),
                             el('td', {}, a.processGroup || '')));
        }
        const row = eventRow(ev);
        if (row) events.prepend(row);
      }
    } while (page.more);
    document.getElementById('error')?.remove();
    const state = stateName(job.state);
    summary.replaceChildren(
      el('p', {}, 'State ', el('span', { id: 'job-state', class: `state state-${state}` }, state),
         ' ', el('span', { id: 'job-reason', class: 'reason' }, jobReason(job))),
      el('p', {}, `${job.spec?.name || ''} · owner ${job.spec?.owner || ''} · ` +
         `${stateName(job.spec?.quantization?.method || 'METHOD_UNSPECIFIED')} · ` +
         `${job.spec?.model?.arch || ''} · ${progressText(job)} · restarts ${job.restarts || 0}`),
      el('p', { class: 'muted' }, `created ${time(job.createTime)} · started ${time(job.startTime)} · ended ${time(job.endTime)}`));
    const p = sortedByX(progress), e = sortedByX(epochs);
    loss.update(p.map(v => v.x), [p.map(v => v.loss ?? null)]);
    lr.update(p.map(v => v.x), [p.map(v => v.lr ?? null), p.map(v => v.regLambda ?? null)]);
    stepTime.update(p.map(v => v.x), [p.map(v => v.stepSeconds ?? null),
                                      p.map(v => v.allreduceSeconds ?? null),
                                      p.map(v => v.dataWaitSeconds ?? null)]);
    acc.update(e.map(v => v.x), ['fp', 'ternary', 'train'].map(k => e.map(v => score(v, k) ?? null)));
    heat.update(e);
    const r = job.result;
    if (r && r.artifactSha256) {
      result.replaceChildren(
        el('table', {}, el('tbody', {}, ...[
          ['artifact', (r.artifactPath || '').split('/').pop()],
          ['size', `${r.artifactBytes || 0} bytes`], ['SHA-256', r.artifactSha256],
          ['bits per weight', num(r.bitsPerWeight)],
          ...(isDetection(r)
            ? [['FP AP50', percent(r.fpDetection?.ap50)], ['ternary AP50', percent(r.ternaryDetection?.ap50)],
               ['ternary AP', percent(r.ternaryDetection?.ap)], ['ternary AP75', percent(r.ternaryDetection?.ap75)]]
            : [['FP top-1', percent(r.fpTop1)], ['ternary top-1', percent(r.ternaryTop1)],
               ['ternary top-5', percent(r.ternaryTop5)]]),
          ...(score(r, 'valTernary') !== undefined || score(r, 'valFp') !== undefined
            ? [[`validation ${metricName(r)} (FP / ternary)`,
                `${percent(score(r, 'valFp'))} / ${percent(score(r, 'valTernary'))}`]] : []),
          ['epochs / steps', `${r.epochs || 0} / ${r.steps || 0}`],
          ['wall time', `${num(r.wallSeconds, 3)} s`], ['images/s', num(r.imagesPerSecond, 4)],
          ['layers', (r.layers || []).map(l => `${l.name}: sparsity ${percent(l.sparsity)}, α ${num(l.alpha, 3)}`).join('; ')],
        ].map(([k, v]) => el('tr', {}, el('th', {}, k), el('td', {}, v))))),
        el('button', { id: 'download', onclick: () => download(jobId).catch(handleError) }, 'Download artifact'),
        el('h4', {}, 'ternctl inspect'), inspect);
      if (!inspected) {
        inspected = true;
        get(`jobs/${encodeURIComponent(jobId)}/inspect`)
          .then((r) => { inspect.textContent = r.text; })
          .catch((e) => { inspect.textContent = `cannot inspect the artifact: ${e.message}`; });
      }
    } else {
      result.replaceChildren(el('p', { class: 'muted' }, 'no artifact yet'));
    }
    return !TERMINAL.has(state);  // unknown (newer) states keep polling
  });
}

// ---- agents ----
function agentsPage() {
  const body = el('tbody');
  main.replaceChildren(el('h2', {}, 'Agents'),
    el('table', { id: 'agents' }, el('thead', {}, el('tr', {}, ...['agent', 'host', 'state', 'slots',
                                                                   'lease expires'].map(h => el('th', {}, h)))), body));
  poll(async () => {
    const list = await get('agents');
    document.getElementById('error')?.remove();
    const rows = (list.agents || []).map(a => el('tr', { 'data-agent-id': a.agentId },
      el('td', {}, a.agentId), el('td', {}, a.host || ''),
      el('td', {}, el('span', { class: `state state-${stateName(a.state)}` }, stateName(a.state))),
      el('td', {}, (a.slots || []).map(s => `${stateName(s.deviceKind)} ${s.used || 0}/${s.total || 0}`).join(', ')),
      el('td', {}, time(a.leaseExpireTime))));
    body.replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { colspan: 5 }, 'no agents'))]));
  });
}

async function route() {
  generation++;
  clearTimeout(timer);
  const hash = location.hash || '#/jobs';
  const [path, query] = hash.slice(1).split('?');
  try {
    await showWhoAmI();
  } catch (e) {
    if (e instanceof AuthError) { showLogin(e.message); return; }
    handleError(e);
    return;
  }
  const parts = path.split('/').filter(Boolean);
  if (parts[0] === 'jobs' && parts[1]) jobPage(decodeURIComponent(parts[1]));
  else if (parts[0] === 'agents') agentsPage();
  else jobsPage(new URLSearchParams(query || ''));
}

document.getElementById('logout').addEventListener('click', () => { setToken(''); route(); });
window.addEventListener('hashchange', route);
route();
