// Drives the agent's regional page in headless Chromium for
// agent_e2e_test.go. Usage: node agent_check.mjs URL SCREENSHOT_DIR NAME
//
// It prints one JSON snapshot of the page per line: "loaded" once an SOS
// row is shown, "missing-name" after Acknowledge is clicked with no name,
// and "acknowledged" after NAME is typed and Acknowledge clicked again.
// The Go test makes every assertion; this script only reports what the
// page shows.
import { chromium } from 'playwright-core';

const [url, shots, name] = process.argv.slice(2);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 700 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });

  const snapshot = async (phase) => {
    const snap = await page.evaluate((phase) => {
      const shown = (id) => {
        const e = document.getElementById(id);
        return e.hidden ? '' : e.textContent;
      };
      return {
        phase,
        title: document.title,
        hub: document.getElementById('hub').textContent,
        outage: shown('outage'),
        calm: shown('calm'),
        notice: shown('notice'),
        error: shown('error'),
        help: shown('actor-help'),
        panelClass: document.getElementById('sos-panel').className,
        rows: [...document.querySelectorAll('#sos tbody tr')].map((tr) => ({
          className: tr.className,
          cells: [...tr.cells].map((td) => td.textContent),
          mapLink: tr.querySelector('a') ? tr.querySelector('a').href : '',
        })),
      };
    }, phase);
    await page.screenshot({ path: `${shots}/agent-${phase}.png`, fullPage: true });
    console.log(JSON.stringify({ ...snap, errors }));
  };

  await page.goto(url);
  await page.waitForSelector('#sos tbody tr button[data-action=acknowledge]');
  await page.waitForFunction(() => !document.getElementById('outage').hidden);
  await snapshot('loaded');

  await page.click('button[data-action=acknowledge]');
  await page.waitForFunction(() => !document.getElementById('actor-help').hidden);
  await snapshot('missing-name');

  await page.fill('#actor', name);
  await page.click('button[data-action=acknowledge]');
  await page.waitForFunction(() => document.body.innerText.includes('Acknowledged here by'));
  await snapshot('acknowledged');
} finally {
  await browser.close();
}
