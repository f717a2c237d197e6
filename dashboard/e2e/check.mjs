// Drives the dashboard in headless Chromium for dashboard_e2e_test.go.
// Usage: node check.mjs URL SCREENSHOT_DIR
//
// It prints one JSON snapshot of the page per line: "loaded" once the REST
// state is shown and the stream is live, then one per phase that the Go
// test names on stdin. For each phase it first takes the phase's steps
// (fill a field, click an element), then waits until the texts the phase
// lists are on the page.
// The Go test makes every assertion; this script only reports what the page shows.
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';

const [url, shots] = process.argv.slice(2);
// Created now, so lines that arrive before the loop below are buffered.
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });

  const snapshot = (phase) => page.evaluate((phase) => {
    const rows = (sel) => [...document.querySelectorAll(sel)].map((tr) => ({
      className: tr.className,
      cells: [...tr.cells].map((td) => td.textContent),
    }));
    const alert = document.getElementById('alert');
    const notice = document.getElementById('notice');
    return {
      phase,
      conn: document.getElementById('conn').textContent,
      seq: document.getElementById('seq').textContent,
      title: document.title,
      alert: alert.hidden ? '' : alert.textContent,
      incidents: rows('#incidents tbody tr'),
      closed: rows('#closed tbody tr'),
      events: rows('#detail-events tbody tr'),
      dialogs: [...document.querySelectorAll('dialog[open] h2')].map((h) => h.textContent),
      notice: notice.hidden ? '' : notice.textContent,
      operator: document.getElementById('operator').value,
      vehicles: rows('#vehicles tbody tr'),
      agents: [...document.querySelectorAll('#agents li')].map((li) => li.textContent),
      plot: document.getElementById('plot-bounds').textContent,
    };
  }, phase);

  await page.goto(url);
  await page.waitForFunction(() => document.getElementById('conn').textContent === 'Live'
    && document.querySelectorAll('#vehicles tbody tr').length > 0);
  const loaded = await snapshot('loaded');
  await page.screenshot({ path: `${shots}/loaded.png`, fullPage: true });
  console.log(JSON.stringify({ ...loaded, errors }));

  // Each stdin line names a phase, the steps to take and the texts that
  // must then be on the page, such as {"phase": "live", "texts":
  // ["DISCONNECTED"]} or {"phase": "ack", "steps": [{"fill": ["#operator",
  // "Maria"]}, {"click": "button[data-action=acknowledge]"}], "texts": [...]}.
  for await (const line of lines) {
    const { phase, texts, steps } = JSON.parse(line);
    for (const step of steps || []) {
      if (step.fill) await page.fill(step.fill[0], step.fill[1]);
      if (step.click) await page.click(step.click);
    }
    await page.waitForFunction((texts) => texts.every((t) => document.body.innerText.includes(t)), texts);
    const snap = await snapshot(phase);
    await page.screenshot({ path: `${shots}/${phase}.png`, fullPage: true });
    console.log(JSON.stringify({ ...snap, errors }));
  }
} finally {
  await browser.close();
}
