// Regional page of an agent: the open SOS alerts of the office's
// vehicles, polled from the agent's local API, and the acknowledge action
// that regional staff take while the hub is unreachable. Staff sign in
// with their hub accounts, which the agent keeps a copy of. The page never
// builds HTML from data: every value goes in with textContent.
'use strict';

(function () {
  const POLL_MS = 2000;
  const NOTICE_MS = 8000;
  const TITLE = document.title;

  const el = (id) => document.getElementById(id);
  // session is the signed-in operator with the CSRF token, null without one.
  // noOperators is set while the form shows that the agent has no accounts.
  const state = { data: null, session: null, noOperators: false, pending: new Set(), noticeTimer: null };

  function formatDuration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function cell(text, className) {
    const td = document.createElement('td');
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function showNotice(text) {
    const n = el('notice');
    n.textContent = text;
    n.hidden = false;
    clearTimeout(state.noticeTimer);
    state.noticeTimer = setTimeout(() => { n.hidden = true; }, NOTICE_MS);
  }

  function showError(text) {
    const e = el('error');
    e.textContent = text;
    e.hidden = !text;
  }

  // lastContact describes the last contact with the hub, which the
  // agent keeps across its restarts.
  function lastContact(data) {
    if (!data.uplink.last_contact) return 'This agent has not reached the hub yet.';
    return `Last contact with the hub ${formatDuration(data.uplink.last_contact_seconds)} ago.`;
  }

  // renderLink shows the hub link and returns whether the hub is
  // unreachable. A link that is connected but brings no acknowledgement
  // (a hung hub) counts as unreachable, because the agent reports
  // reachable only while the hub responds.
  function renderLink(data) {
    const hub = el('hub');
    const down = !data.uplink.reachable;
    hub.className = 'conn ' + (down ? 'conn-reconnecting' : 'conn-connected');
    hub.textContent = down ? 'Hub: UNREACHABLE' : 'Hub: connected';
    if (down && data.uplink.state === 'connected') hub.textContent = 'Hub: NOT ANSWERING';
    el('office').textContent = `${data.region} office, agent ${data.agent}`;

    const outage = el('outage');
    const calm = el('calm');
    if (down) {
      let text = `HUB UNREACHABLE for ${formatDuration(data.uplink.unreachable_seconds)}. ${lastContact(data)} ` +
        'Acknowledge SOS here: the driver is told at once, and the hub records it when the link returns.';
      if (data.outage_sms && data.outage_sms.enabled) {
        text += ` Unacknowledged SOS are sent by SMS to ${data.outage_sms.recipients} number(s) after ` +
          `${formatDuration(data.outage_sms.after_seconds)} of outage.`;
      }
      outage.textContent = text;
      outage.hidden = false;
      calm.hidden = true;
      document.title = 'HUB DOWN: ' + TITLE;
    } else {
      outage.hidden = true;
      calm.textContent = 'Hub connected. Operators handle and acknowledge SOS on the hub dashboard; ' +
        'this page is the fallback for a hub outage and takes acknowledgements only then. ' + lastContact(data);
      calm.hidden = false;
      document.title = TITLE;
    }
    return down;
  }

  function smsCell(sos) {
    const td = document.createElement('td');
    const list = document.createElement('ul');
    list.className = 'sms-list';
    for (const n of sos.notifications || []) {
      const li = document.createElement('li');
      li.className = 'sms-' + n.state;
      li.textContent = `${n.address}: ${n.state}` + (n.error ? ` (${n.error})` : '');
      list.appendChild(li);
    }
    if (list.children.length === 0) {
      td.textContent = '–';
    } else {
      td.appendChild(list);
    }
    return td;
  }

  function locationCell(sos) {
    const td = document.createElement('td');
    if (!sos.has_location || !sos.map_url) {
      td.textContent = 'unknown';
      return td;
    }
    const a = document.createElement('a');
    a.href = sos.map_url;
    a.target = '_blank';
    a.rel = 'noopener noreferrer';
    a.textContent = `${sos.lat.toFixed(5)}, ${sos.lon.toFixed(5)}`;
    td.appendChild(a);
    return td;
  }

  function actionCell(sos, down) {
    const td = document.createElement('td');
    td.className = 'actions';
    if (sos.local_ack_by) {
      td.textContent = `Acknowledged here by ${sos.local_ack_by}` + (sos.local_ack_queued ? '' : ' (not yet queued for the hub)');
      return td;
    }
    if (!down) {
      td.textContent = 'Acknowledge on the operators\' dashboard';
      return td;
    }
    const div = document.createElement('div');
    div.className = 'row-actions';
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'primary';
    button.dataset.action = 'acknowledge';
    button.dataset.vehicle = sos.vehicle;
    button.dataset.sos = sos.sos_id;
    button.textContent = sos.presses > 1 ? `Acknowledge all ${sos.presses}` : 'Acknowledge';
    const key = sos.vehicle + '/' + sos.sos_id;
    button.disabled = state.pending.has(key);
    div.appendChild(button);
    td.appendChild(div);
    return td;
  }

  function render(data) {
    const down = renderLink(data);
    const list = data.sos || [];
    const body = el('sos').tBodies[0];
    body.replaceChildren();
    let open = 0;
    for (const sos of list) {
      const tr = document.createElement('tr');
      const unacknowledged = sos.state === 'received' && !sos.local_ack_by;
      if (unacknowledged) open++;
      tr.className = 'state-' + (unacknowledged ? 'open' : sos.state);
      tr.dataset.vehicle = sos.vehicle;
      tr.dataset.sos = sos.sos_id;
      tr.appendChild(cell(sos.vehicle));
      const ids = sos.sos_ids && sos.sos_ids.length > 1 ? `${sos.sos_id} (pressed ${sos.presses} times: ${sos.sos_ids.join(', ')})` : sos.sos_id;
      tr.appendChild(cell(ids));
      tr.appendChild(cell(sos.kind || '–'));
      tr.appendChild(cell(sos.received_at_manila || '–'));
      tr.appendChild(cell(sos.state));
      tr.appendChild(cell(sos.hub_received ? 'yes' : 'not yet', sos.hub_received ? 'hub-yes' : 'hub-no'));
      tr.appendChild(locationCell(sos));
      let note = sos.note || '';
      if (sos.cancel_requested) {
        note = `Driver asked to cancel: ${sos.cancel_reason || 'no reason given'}` + (note ? `. ${note}` : '');
      }
      tr.appendChild(cell(note, sos.cancel_requested ? 'note cancel-requested' : 'note'));
      tr.appendChild(smsCell(sos));
      tr.appendChild(actionCell(sos, down));
      body.appendChild(tr);
    }
    el('sos').hidden = list.length === 0;
    el('sos-empty').hidden = list.length !== 0;
    el('sos-count').textContent = String(list.length);
    el('sos-panel').classList.toggle('has-open', down && open > 0);
    if (data.store !== 'open') {
      showError('The local SOS store is unavailable: ' + (data.store_error || 'unknown error'));
    }
  }

  // showSignIn shows the sign-in form instead of the SOS list, with
  // message as the reason. It also shows when the agent has no operator
  // accounts from the hub yet.
  function showSignIn(body, message) {
    state.session = null;
    el('local-main').hidden = true;
    el('who').hidden = true;
    el('sign-out').hidden = true;
    el('outage').hidden = true;
    el('calm').hidden = true;
    el('notice').hidden = true;
    const notice = el('login-notice');
    if (body && body.operator_list_received === false) {
      notice.textContent = 'No operator accounts received from the hub yet: the agent needs to reach the hub once. ' +
        'Until then nobody can sign in here; call the operators.';
      notice.hidden = false;
      state.noOperators = true;
    } else if (message || state.noOperators || el('login-main').hidden) {
      // A poll of the form keeps the message shown, unless the accounts
      // arrived since.
      notice.textContent = message || '';
      notice.hidden = !message;
      state.noOperators = false;
    }
    if (el('login-main').hidden) {
      el('login-main').hidden = false;
      el('username').focus();
    }
  }

  // showSignedIn shows the operator of the session and the SOS list.
  function showSignedIn(session) {
    state.session = session;
    el('login-main').hidden = true;
    el('local-main').hidden = false;
    el('who-name').textContent = session.display_name || session.operator;
    el('who-role').textContent = session.role;
    el('who').hidden = false;
    el('sign-out').hidden = false;
  }

  // load reads the local API and shows it, or the sign-in form without a
  // session.
  async function load() {
    try {
      const resp = await fetch('/api/v1/local/sos', { cache: 'no-store' });
      const data = await resp.json();
      if (resp.status === 401) {
        showSignIn(data, state.session ? 'Your session ended: sign in again.' : '');
        return;
      }
      state.data = data;
      if (resp.ok) showError('');
      render(data);
    } catch (err) {
      showError('Cannot reach this agent: ' + err.message);
    } finally {
      el('clock').textContent = new Date().toLocaleTimeString('en-GB', { timeZone: 'Asia/Manila' }) + ' PHT';
    }
  }

  async function poll() {
    await load();
    setTimeout(poll, POLL_MS);
  }

  // start reads the session and shows the page or the sign-in form.
  async function start() {
    try {
      const resp = await fetch('/api/v1/local/session', { cache: 'no-store' });
      const body = await resp.json().catch(() => ({}));
      if (resp.ok) {
        showSignedIn(body);
      } else {
        showSignIn(body, '');
      }
    } catch (err) {
      showError('Cannot reach this agent: ' + err.message);
    }
    poll();
  }

  async function signIn(ev) {
    ev.preventDefault();
    const error = el('login-error');
    const submit = el('login-submit');
    const username = el('username').value.trim();
    const password = el('password').value;
    if (!username || !password) {
      error.textContent = 'Enter your user name and password.';
      error.hidden = false;
      return;
    }
    submit.disabled = true;
    try {
      const resp = await fetch('/api/v1/local/session', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ username, password }),
      });
      const body = await resp.json().catch(() => ({}));
      if (!resp.ok) {
        error.textContent = body.error || `Sign-in failed (${resp.status})`;
        error.hidden = false;
        return;
      }
      error.hidden = true;
      el('password').value = '';
      showSignedIn(body);
      await load();
    } catch (err) {
      error.textContent = 'Cannot reach this agent: ' + err.message;
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  }

  async function signOut() {
    const csrf = state.session ? state.session.csrf_token : '';
    try {
      await fetch('/api/v1/local/session', { method: 'DELETE', headers: { 'X-CSRF-Token': csrf } });
    } catch (err) {
      // The session ends on the agent after its idle time anyway.
    }
    showSignIn(null, 'You are signed out.');
  }

  async function acknowledge(button) {
    if (!state.session) {
      showSignIn(null, 'Sign in to acknowledge.');
      return;
    }
    const vehicle = button.dataset.vehicle;
    const sosID = button.dataset.sos;
    const key = vehicle + '/' + sosID;
    state.pending.add(key);
    button.disabled = true;
    try {
      const url = `/api/v1/local/sos/${encodeURIComponent(vehicle)}/${encodeURIComponent(sosID)}/acknowledge`;
      const resp = await fetch(url, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': state.session.csrf_token },
        body: '{}',
      });
      const body = await resp.json().catch(() => ({}));

      if (resp.status === 401) {
        showSignIn(body, 'Your session ended: sign in again, then acknowledge.');
        return;
      }
      if (!resp.ok) {
        showError(`Acknowledging SOS ${sosID} of ${vehicle} failed: ${body.error || resp.status}`);
        return;
      }

      let text = body.message || `Acknowledged SOS ${sosID} of vehicle ${vehicle}: the driver has been told.`;
      if (body.acknowledged_sos_ids && body.acknowledged_sos_ids.length > 1) {
        text += ` Repeat presses covered: ${body.acknowledged_sos_ids.join(', ')}.`;
      }
      if (body.hub_record !== 'queued') {
        text += ' It is not yet queued for the hub; the agent keeps trying.';
      }
      showNotice(text);
      showError('');
    } catch (err) {
      showError(`Acknowledging SOS ${sosID} of ${vehicle} failed: ${err.message}`);
    } finally {
      state.pending.delete(key);
      await load();
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    el('sos').addEventListener('click', (ev) => {
      const button = ev.target.closest('button[data-action=acknowledge]');
      if (button) acknowledge(button);
    });
    el('login-form').addEventListener('submit', signIn);
    el('sign-out').addEventListener('click', signOut);
    start();
  });
})();
