// Drives the web console in headless Chromium (Debian's, via playwright-core)
// against the real ternd that console_e2e.sh started. Every check throws on
// failure (exit 1). Environment: WEB_URL, TOKEN (alice's), JOB (runs to
// SUCCEEDED), CANCELLED_JOB and CANCEL_REASON, AGENT, SCREENSHOTS (a dir),
// NPM_DIR (where playwright-core is installed), CHROMIUM.
import { createRequire } from 'node:module';
import { join } from 'node:path';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const require = createRequire(join(env('NPM_DIR'), 'node_modules', 'x.js'));
const { chromium } = require('playwright-core');

const url = env('WEB_URL');
const shots = env('SCREENSHOTS');
const job = env('JOB');
const cancelled = env('CANCELLED_JOB');
const reason = env('CANCEL_REASON');
const log = (...args) => console.log('console_check:', ...args);
function check(condition, message) { if (!condition) throw new Error(`FAIL: ${message}`); }

const browser = await chromium.launch({
  executablePath: env('CHROMIUM'),
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
});
try {
  // 1. A browser without the token sees the sign-in form and no job data.
  {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    const statuses = [];
    page.on('response', (r) => { if (r.url().includes('/api/v1/')) statuses.push(r.status()); });
    await page.goto(url);
    await page.waitForSelector('#login', { timeout: 15000 });
    check(statuses.length > 0 && statuses.every((s) => s === 401),
          `API answers without a token: ${statuses}`);
    check((await page.$('tr[data-job-id]')) === null, 'job rows shown without a token');
    check(!(await page.textContent('body')).includes('web-console-e2e'), 'a job name shown without a token');
    check((await page.$('#jobs')) === null, 'the job table is shown without a token');
    const direct = await page.evaluate(async () => {
      const r = await fetch('api/v1/jobs');
      return { status: r.status, body: await r.text() };
    });
    check(direct.status === 401, `GET /api/v1/jobs without a token: ${direct.status}`);
    check(!direct.body.includes('"jobs"'), `401 body carries data: ${direct.body}`);
    // A wrong token is refused too, and the form says why.
    await page.fill('#token', 'tern_not-a-real-token-000000');
    await page.click('#login button[type=submit]');
    await page.waitForSelector('#login-error:has-text("unknown")', { timeout: 15000 });
    await page.screenshot({ path: join(shots, 'login-refused.png') });
    log('unauthenticated and wrong-token browsers are refused');
    await context.close();
  }

  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on('pageerror', (e) => { console.error('page error:', e.message); process.exitCode = 1; });
  await page.goto(url);
  await page.fill('#token', env('TOKEN'));
  await page.click('#login button[type=submit]');

  // 2. The job appears in the list.
  await page.waitForSelector(`#jobs tr[data-job-id="${job}"]`, { timeout: 30000 });
  check((await page.textContent('#whoami')).includes('alice'), 'whoami does not name alice');
  log(`job ${job} is listed`);

  // 3. The job page: its loss curve gets points while it runs.
  await page.goto(`${url}#/jobs/${job}`);
  await page.waitForSelector('#job-state', { timeout: 30000 });
  const countsWhileRunning = new Set();
  let lastPoints = 0;
  const deadline = Date.now() + 200000;
  for (;;) {
    const state = await page.textContent('#job-state');
    const points = Number(await page.getAttribute('#loss-chart', 'data-points'));
    if (points !== lastPoints) log(`state ${state}, ${points} points on the loss curve`);
    lastPoints = points;
    if (state === 'RUNNING' && points > 0) countsWhileRunning.add(points);
    if (state === 'SUCCEEDED') break;
    check(!['FAILED', 'CANCELLED'].includes(state), `job ${job} ended ${state}`);
    check(Date.now() < deadline, `job ${job} did not reach SUCCEEDED in time (state ${state})`);
    await page.waitForTimeout(500);
  }
  // Two different counts: the page added points to the curve while it ran.
  check(countsWhileRunning.size >= 2,
        `the loss curve did not grow while the job was RUNNING (counts seen: ${[...countsWhileRunning]})`);
  // After the end: the final curve, the accuracy points, the result and the heat-map.
  await page.waitForFunction(() => Number(document.querySelector('#loss-chart').dataset.points) > 1);
  await page.waitForSelector('#download', { timeout: 15000 });
  check((await page.textContent('#job-result')).includes('SHA-256'), 'no result summary');
  // The artifact's summary is ternctl inspect's.
  await page.waitForSelector('#inspect:has-text("bits each")', { timeout: 15000 });
  const inspectText = await page.textContent('#inspect');
  check(inspectText.includes('.tern: ') && inspectText.includes('zeros'),
        `the inspect summary is not ternctl inspect's: ${inspectText.slice(0, 200)}`);
  check((await page.$$('#events tr[data-kind="state"]')).length >= 3, 'too few state events listed');
  // The epochs and HLA's switch to the ternary forward are listed with top-1.
  const epochRow = await page.textContent('#events tr[data-kind="epoch end"]');
  check(/test top-1 FP \d+\.\d\d%, ternary \d+\.\d\d%/.test(epochRow), `epoch row: ${epochRow}`);
  const switchRow = await page.textContent('#events tr[data-kind="switch"]');
  check(/top-1 FP \d+\.\d\d%, ternary \d+\.\d\d%, after BatchNorm re-estimation \d+\.\d\d%/
          .test(switchRow), `switch row: ${switchRow}`);
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
  check(download.suggestedFilename().endsWith('.tern'), `download named ${download.suggestedFilename()}`);
  await download.saveAs(join(shots, 'artifact.tern'));
  await page.screenshot({ path: join(shots, 'job.png'), fullPage: true });
  log(`job ${job} SUCCEEDED; curve, result and download shown`);

  // 4. The cancelled job shows CANCELLED with its reason in the list.
  await page.goto(`${url}#/jobs`);
  const row = `#jobs tr[data-job-id="${cancelled}"]`;
  await page.waitForSelector(`${row}[data-state="CANCELLED"]`, { timeout: 30000 });
  const reasonText = await page.textContent(`${row} td.reason`);
  check(reasonText.includes(reason), `cancelled job's reason "${reasonText}" lacks "${reason}"`);
  check((await page.getAttribute(`#jobs tr[data-job-id="${job}"]`, 'data-state')) === 'SUCCEEDED',
        'the list does not show the job SUCCEEDED');
  await page.screenshot({ path: join(shots, 'jobs.png'), fullPage: true });
  // Filtering by state keeps only the matching jobs.
  await page.fill('#filter-state', 'CANCELLED');
  await page.press('#filter-state', 'Enter');
  // The list is rebuilt after the filter changes: wait for the filtered list
  // (the job gone and the cancelled one there), not for a moment between.
  const filtered = await page.waitForFunction(
    ([j, c]) => !document.querySelector(`#jobs tr[data-job-id="${j}"]`) &&
                document.querySelector(`#jobs tr[data-job-id="${c}"]`) !== null,
    [job, cancelled], { timeout: 15000 }).then(() => true, () => false);
  check((await page.$(row)) !== null, 'the state filter hid the cancelled job');
  check(filtered, `the state filter CANCELLED still lists job ${job}`);
  log(`job ${cancelled} is CANCELLED with reason "${reasonText}"`);

  // 5. The agents page lists the agent and its slots.
  await page.goto(`${url}#/agents`);
  await page.waitForSelector(`#agents tr[data-agent-id="${env('AGENT')}"]`, { timeout: 15000 });
  await page.screenshot({ path: join(shots, 'agents.png') });
  log('agents page lists the agent');
  await context.close();
} finally {
  await browser.close();
}
