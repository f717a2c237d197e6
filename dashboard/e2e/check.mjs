// Drives the dashboard in headless Chromium for dashboard_e2e_test.go.
// Usage: XPRESS_E2E_USER=name XPRESS_E2E_PASSWORD=secret node check.mjs URL SCREENSHOT_DIR
//
// It opens URL, which sends it to the sign-in page, and signs in with the
// user name and password from the environment. It prints one JSON
// snapshot of the page per line: "loaded" once the REST
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
  // Every WebSocket the page opened, and whether it has closed. One whose
  // handshake failed, as during the hub's restart, reports an error and
  // no close.
  const sockets = [];
  page.on('websocket', (ws) => {
    const entry = { url: ws.url(), closed: false };
    sockets.push(entry);
    ws.on('close', () => { entry.closed = true; });
    ws.on('socketerror', () => { entry.closed = true; });
  });
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });

  const snapshot = async (phase) => ({ ...(await page.evaluate((phase) => {
    const text = (id) => {
      const node = document.getElementById(id);
      return node ? node.textContent : '';
    };
    const visibleText = (id) => {
      const node = document.getElementById(id);
      return node && !node.hidden ? node.textContent : '';
    };
    const rows = (sel) => [...document.querySelectorAll(sel)].map((tr) => ({
      className: tr.className,
      cells: [...tr.cells].map((td) => td.textContent),
    }));
    return {
      phase,
      path: location.pathname + location.search,
      conn: text('conn'),
      seq: text('seq'),
      title: document.title,
      alert: visibleText('alert'),
      incidents: rows('#incidents tbody tr'),
      closed: rows('#closed tbody tr'),
      events: rows('#detail-events tbody tr'),
      dialogs: [...document.querySelectorAll('dialog[open] h2')].map((h) => h.textContent),
      notice: visibleText('notice'),
      signedIn: [text('who-name'), text('who-role'), text('who-regions')],
      login: [visibleText('login-notice'), visibleText('login-error')],
      vehicles: rows('#vehicles tbody tr'),
      agents: [...document.querySelectorAll('#agents li')].map((li) => li.textContent),
      plot: text('plot-bounds'),
    };
  }, phase)), sockets: sockets.map((s) => ({ ...s })) });

  await page.goto(url);
  await page.waitForSelector('#login-form');
  await page.fill('#username', process.env.XPRESS_E2E_USER || '');
  await page.fill('#password', process.env.XPRESS_E2E_PASSWORD || '');
  await page.click('#login-submit');
  // The page changes from the sign-in page to the dashboard meanwhile.
  await page.waitForFunction(() => (document.getElementById('conn') || {}).textContent === 'Live'
    && document.querySelectorAll('#vehicles tbody tr').length > 0);
  const loaded = await snapshot('loaded');
  await page.screenshot({ path: `${shots}/loaded.png`, fullPage: true });
  console.log(JSON.stringify({ ...loaded, errors }));

  // Each stdin line names a phase, the steps to take and the texts that
  // must then be on the page, such as {"phase": "live", "texts":
  // ["DISCONNECTED"]} or {"phase": "ack", "steps": [{"click":
  // "button[data-action=acknowledge]"}], "texts": [...]}.
  for await (const line of lines) {
    const { phase, texts, steps } = JSON.parse(line);
    for (const step of steps || []) {
      if (step.fill) await page.fill(step.fill[0], step.fill[1]);
      if (step.click) await page.click(step.click);
    }
    await page.waitForFunction((texts) => document.body !== null
      && texts.every((t) => document.body.innerText.includes(t)), texts);
    const snap = await snapshot(phase);
    await page.screenshot({ path: `${shots}/${phase}.png`, fullPage: true });
    console.log(JSON.stringify({ ...snap, errors }));
  }
} finally {
  await browser.close();
}
