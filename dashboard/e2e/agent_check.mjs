// Drives the agent's regional page in headless Chromium for
// agent_e2e_test.go. Usage:
// node agent_check.mjs URL SCREENSHOT_DIR USERNAME PASSWORD
//
// It prints one JSON snapshot of the page per line: "no-operators" when
// the sign-in form shows that the agent has no operator accounts yet,
// "wrong-password" after a sign-in with a wrong password once the
// accounts arrived, "loaded" once signed in with PASSWORD and an SOS row
// is shown, "acknowledged" after Acknowledge is clicked, and
// "signed-out" after the sign-out button.
// The Go test makes every assertion; this script only reports what the
// page shows.
import { chromium } from 'playwright-core';

const [url, shots, username, password] = process.argv.slice(2);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 700 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    // Chromium logs every 401 response; the page gets one for each poll
    // while signed out and for the wrong password, as designed.
    if (m.type() === 'error' && !m.text().includes('status of 401')) errors.push(`console: ${m.text()}`);
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
        login: !document.getElementById('login-main').hidden,
        loginNotice: shown('login-notice'),
        loginError: shown('login-error'),
        signedIn: shown('who'),
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
  await page.waitForFunction(() => !document.getElementById('login-notice').hidden);
  await snapshot('no-operators');

  // The Go test hands the agent its operator list after that snapshot;
  // the form's next poll drops the notice.
  await page.waitForFunction(() => document.getElementById('login-notice').hidden, null, { timeout: 30000 });
  await page.fill('#username', username);
  await page.fill('#password', password + '-wrong');
  await page.click('#login-submit');
  await page.waitForFunction(() => !document.getElementById('login-error').hidden);
  await snapshot('wrong-password');

  await page.fill('#password', password);
  await page.click('#login-submit');
  await page.waitForSelector('#sos tbody tr button[data-action=acknowledge]');
  await page.waitForFunction(() => !document.getElementById('outage').hidden);
  await snapshot('loaded');

  await page.click('button[data-action=acknowledge]');
  await page.waitForFunction(() => document.body.innerText.includes('Acknowledged here by'));
  await snapshot('acknowledged');

  await page.click('#sign-out');
  await page.waitForFunction(() => !document.getElementById('login-main').hidden);
  await snapshot('signed-out');
} finally {
  await browser.close();
}
