// Operators' sign-in page. It posts the user name and password to
// /api/v1/session, which sets the session cookie, and goes to the
// dashboard. The hub's error text is shown as it is: a wrong password, a
// locked account (423) or too many attempts (429) each say what to do.
'use strict';

(function () {
  const el = (id) => document.getElementById(id);

  function showError(text) {
    const node = el('login-error');
    node.textContent = text;
    node.hidden = !text;
    if (text) {
      // The notice of why the operator is here no longer matters.
      el('login-notice').hidden = true;
    }
  }

  // The message for a refused sign-in, from the hub's {"error": ...} body.
  function refusal(res, body) {
    const msg = body && typeof body.error === 'string' ? body.error : '';
    switch (res.status) {
      case 401:
        return msg || 'Wrong user name or password.';
      case 423:
        return msg || 'This account is locked after too many failed sign-ins. Wait and try again, or ask an admin.';
      case 429: {
        const wait = Number(res.headers.get('Retry-After'));
        const hint = Number.isFinite(wait) && wait > 0 ? ` Try again in ${Math.ceil(wait)} s.` : '';
        return (msg || 'Too many sign-in attempts.') + hint;
      }
      default:
        return msg ? `${msg} (${res.status})` : `Sign-in failed: ${res.status} ${res.statusText}`;
    }
  }

  async function signIn(event) {
    event.preventDefault();
    const username = el('username').value.trim();
    const password = el('password').value;
    if (!username || !password) {
      showError('Enter your user name and password.');
      (username ? el('password') : el('username')).focus();
      return;
    }
    const submit = el('login-submit');
    submit.disabled = true;
    showError('');
    try {
      const res = await fetch('/api/v1/session', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ username, password }),
        cache: 'no-store',
        credentials: 'same-origin',
      });
      let body = null;
      try {
        body = await res.json();
      } catch (e) {
        body = null;
      }
      if (!res.ok) {
        showError(refusal(res, body));
        el('password').value = '';
        el('password').focus();
        return;
      }
      location.replace('/');
    } catch (err) {
      showError(`Could not reach the hub (${err.message}). Check the connection and try again.`);
    } finally {
      submit.disabled = false;
    }
  }

  // An operator who is still signed in goes straight to the dashboard.
  async function checkSession() {
    try {
      const res = await fetch('/api/v1/session', { headers: { Accept: 'application/json' }, cache: 'no-store' });
      if (res.ok) {
        location.replace('/');
      }
    } catch (e) {
      // The hub is unreachable; the form shows why when it is sent.
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    el('login-form').addEventListener('submit', signIn);
    // The dashboard says why it sent the operator here.
    const notice = {
      'signed-out': 'You are signed out.',
      expired: 'Your session ended. Sign in again.',
    }[new URLSearchParams(location.search).get('reason')];
    if (notice) {
      el('login-notice').textContent = notice;
      el('login-notice').hidden = false;
    }
    checkSession();
  });
})();
