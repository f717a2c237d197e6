// Operators' dashboard: active SOS incidents, vehicle positions and agent
// connections, kept live from the hub's event stream, and the incident
// actions (acknowledge, assign, dispatch, note, resolve, cancel) that
// operators take on an SOS.
//
// The page needs a signed-in operator: it reads the session first and
// sends the operator to login.html when there is none, or when any request
// returns 401. State-changing requests carry the session's CSRF token in
// X-CSRF-Token. The hub sends only the operator's regions, in REST
// responses and on the stream.
//
// Start-up order: open the WebSocket first, and on its "hello" frame load
// the REST state while queueing stream events, then apply the queue. So no
// event published between the REST read and the stream's start is lost.
// Applying an event twice is harmless: newer fix times and incident
// updates win. On reconnect the stream resumes with after=<last seq>; a
// "reset" frame means events were missed, so the state is loaded again.
'use strict';

(function () {
  const ACTIVE_STATES = ['open', 'acknowledged', 'dispatched'];
  const CLOSED_STATES = ['resolved', 'cancelled'];
  // How many resolved or cancelled incidents the "Recently closed" list keeps.
  const CLOSED_LIMIT = 20;
  const NOTICE_MS = 6000;
  // The close reason of a stream the hub ended because its session ended.
  const SIGNED_OUT_REASON = 'signed out';
  const STALE_AFTER_MS = 5 * 60 * 1000;
  const MAX_FUTURE_MS = 5 * 60 * 1000;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 30000;
  const RENDER_INTERVAL_MS = 250;
  const LABEL_MAX_POINTS = 50;

  const state = {
    vehicles: new Map(), // vehicle_id → position (store.Position JSON)
    statuses: new Map(), // vehicle_id → online, for vehicles without a fix yet
    incidents: new Map(), // incident id → incident (active states only)
    closed: new Map(), // incident id → incident (resolved or cancelled, the newest CLOSED_LIMIT)
    agents: new Map(), // agent_id → agent state
    lastSeq: null, // seq of the last event applied or announced, null before the first hello
    loading: false,
    reloadRequested: false, // a reset arrived while the state was loading
    queue: [], // events received while the REST state loads
    alerted: new Set(), // incident ids already announced
  };

  const conn = { ws: null, attempt: 0, timer: null, retryAt: 0 };
  // current is the signed-in operator, from GET /api/v1/session: operator,
  // display_name, role, regions and csrf_token. leaving is set once the
  // page is on its way to the sign-in page, so nothing reconnects.
  const session = { current: null, leaving: false };
  let sound = null; // AudioContext once the operator enables sound
  const dirty = { incidents: false, vehicles: false, agents: false, plot: false };
  // The open action dialog ({action, id}) and the incident shown in the detail dialog.
  const dialog = { pending: null, detailId: null };

  const el = (id) => document.getElementById(id);

  // ---- Time formatting in Asia/Manila ----

  const manila = new Intl.DateTimeFormat('en-GB', {
    timeZone: 'Asia/Manila',
    year: 'numeric', month: '2-digit', day: '2-digit',
    hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23',
  });

  function formatManila(value) {
    const d = new Date(value);
    if (!value || Number.isNaN(d.getTime())) {
      return '–';
    }
    const p = {};
    for (const part of manila.formatToParts(d)) {
      p[part.type] = part.value;
    }
    return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}`;
  }

  function formatAge(value) {
    const ms = Date.now() - new Date(value).getTime();
    if (Number.isNaN(ms)) {
      return '–';
    }
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d`;
  }

  function fixed(value, digits) {
    return typeof value === 'number' && Number.isFinite(value) ? value.toFixed(digits) : '–';
  }

  // ---- Applying events ----

  function time(value) {
    const t = new Date(value).getTime();
    return Number.isNaN(t) ? 0 : t;
  }

  function applyPosition(pos) {
    if (!pos || !pos.vehicle_id || !pos.fix) {
      return;
    }
    // A fix far ahead of this clock must not freeze the row at a bogus time.
    if (time(pos.fix.ts) > Date.now() + MAX_FUTURE_MS) {
      return;
    }
    const old = state.vehicles.get(pos.vehicle_id);
    if (old && time(old.fix.ts) > time(pos.fix.ts)) {
      return;
    }
    const merged = Object.assign({}, pos);
    if (merged.online === undefined) {
      if (old && old.online !== undefined) {
        merged.online = old.online;
      } else if (state.statuses.has(pos.vehicle_id)) {
        merged.online = state.statuses.get(pos.vehicle_id);
      }
    }
    state.vehicles.set(pos.vehicle_id, merged);
    dirty.vehicles = dirty.plot = true;
  }

  function applyStatus(st) {
    if (!st || !st.vehicle_id) {
      return;
    }
    state.statuses.set(st.vehicle_id, !!st.online);
    const v = state.vehicles.get(st.vehicle_id);
    if (v) {
      v.online = !!st.online;
      dirty.vehicles = dirty.plot = true;
    }
  }

  function applyIncident(inc, opened) {
    if (!inc || inc.id === undefined) {
      return;
    }
    const old = state.incidents.get(inc.id) || state.closed.get(inc.id);
    if (old && time(old.updated_at) > time(inc.updated_at)) {
      return;
    }
    if (ACTIVE_STATES.includes(inc.state)) {
      state.incidents.set(inc.id, inc);
      state.closed.delete(inc.id);
      if (opened && inc.state === 'open' && !state.alerted.has(inc.id)) {
        state.alerted.add(inc.id);
        announce(inc);
      }
    } else {
      state.incidents.delete(inc.id);
      if (CLOSED_STATES.includes(inc.state)) {
        state.closed.set(inc.id, inc);
        trimClosed();
      }
    }
    dirty.incidents = dirty.closed = dirty.plot = dirty.vehicles = true;
    if (dialog.detailId === inc.id) {
      loadDetail(inc.id);
    }
  }

  function closedAt(inc) {
    return inc.resolved_at || inc.cancelled_at || inc.updated_at;
  }

  function sortedClosed() {
    return [...state.closed.values()].sort((a, b) => time(closedAt(b)) - time(closedAt(a)) || b.id - a.id);
  }

  function trimClosed() {
    for (const inc of sortedClosed().slice(CLOSED_LIMIT)) {
      state.closed.delete(inc.id);
    }
  }

  function applyAgent(agent) {
    if (!agent || !agent.agent_id) {
      return;
    }
    state.agents.set(agent.agent_id, agent);
    dirty.agents = true;
  }

  function applyEvent(ev) {
    const data = ev.data;
    switch (ev.type) {
      case 'fix':
        applyPosition(data);
        break;
      case 'vehicle.status':
        applyStatus(data);
        break;
      case 'incident.opened':
      case 'incident.updated':
        // The payload is an incident change ({incident, opened, event}); a bare incident is accepted too.
        applyIncident(data && data.incident ? data.incident : data, ev.type === 'incident.opened');
        break;
      case 'agent.status':
        applyAgent(data);
        break;
      default:
        break;
    }
  }

  // ---- REST state ----

  async function getJSON(path) {
    const res = await fetch(path, { headers: { Accept: 'application/json' }, cache: 'no-store' });
    if (res.status === 401) {
      toLogin('expired');
      throw new Error(`${path}: 401 signed out`);
    }
    let body = null;
    try {
      body = await res.json();
    } catch (e) {
      body = null;
    }
    if (!res.ok) {
      const msg = body && body.error ? body.error : res.statusText;
      throw new Error(`${path}: ${res.status} ${msg}`);
    }
    return body;
  }

  async function loadState() {
    state.loading = true;
    state.reloadRequested = false;
    let delay = BACKOFF_MIN_MS;
    for (;;) {
      try {
        const [vehicles, incidents, closed, agents] = await Promise.all([
          getJSON('/api/v1/vehicles'),
          getJSON('/api/v1/incidents?state=' + ACTIVE_STATES.join(',') + '&limit=1000'),
          getJSON('/api/v1/incidents?state=' + CLOSED_STATES.join(',') + '&limit=' + CLOSED_LIMIT),
          getJSON('/api/v1/agents'),
        ]);
        state.vehicles.clear();
        state.incidents.clear();
        state.closed.clear();
        state.agents.clear();
        for (const v of vehicles.vehicles || []) applyPosition(v);
        for (const inc of closed.incidents || []) applyIncident(inc, false);
        for (const inc of incidents.incidents || []) {
          // Incidents already open at load time are shown, not announced.
          state.alerted.add(inc.id);
          applyIncident(inc, false);
        }
        for (const a of agents.agents || []) applyAgent(a);
        showError('');
        break;
      } catch (err) {
        showError(`Could not load state (${err.message}); retrying in ${Math.round(delay / 1000)} s.`);
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 2, BACKOFF_MAX_MS);
      }
    }
    const queued = state.queue;
    state.queue = [];
    state.loading = false;
    for (const ev of queued) applyEvent(ev);
    dirty.incidents = dirty.closed = dirty.vehicles = dirty.agents = dirty.plot = true;
    if (state.reloadRequested) {
      state.reloadRequested = false;
      loadState();
    }
  }

  // ---- Stream ----

  function streamURL() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const after = state.lastSeq === null ? '' : `?after=${state.lastSeq}`;
    return `${scheme}//${location.host}/api/v1/stream${after}`;
  }

  function connect() {
    conn.timer = null;
    setConn('connecting', state.lastSeq === null ? 'Connecting…' : `Resuming after seq ${state.lastSeq}…`);
    const ws = new WebSocket(streamURL());
    conn.ws = ws;
    ws.onmessage = (msg) => {
      let frame;
      try {
        frame = JSON.parse(msg.data);
      } catch (e) {
        return;
      }
      onFrame(frame);
    };
    ws.onopen = () => {
      conn.attempt = 0;
      setConn('connected', 'Live');
    };
    ws.onclose = (event) => {
      if (conn.ws !== ws) {
        return;
      }
      conn.ws = null;
      if (session.leaving) {
        return;
      }
      if (event.code === 1008 && event.reason === SIGNED_OUT_REASON) {
        // Signed out here, in another tab, or by an admin.
        toLogin('signed-out');
        return;
      }
      // A refused upgrade looks like any other failure, so reconnect only
      // while the session lasts.
      checkSession().then((signedIn) => {
        if (signedIn) {
          scheduleReconnect();
        }
      });
    };
  }

  function scheduleReconnect() {
    // Exponential backoff with jitter, so a hub restart is not met by every dashboard at once.
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** conn.attempt);
    const delay = Math.round(base / 2 + Math.random() * base / 2);
    conn.attempt++;
    conn.retryAt = Date.now() + delay;
    updateReconnectLabel();
    conn.timer = setTimeout(connect, delay);
  }

  function updateReconnectLabel() {
    if (conn.timer === null && conn.ws !== null) {
      return;
    }
    const wait = Math.max(0, Math.ceil((conn.retryAt - Date.now()) / 1000));
    const resume = state.lastSeq === null ? '' : `, resuming after seq ${state.lastSeq}`;
    setConn('reconnecting', `Disconnected: retry ${conn.attempt} in ${wait} s${resume}`);
  }

  function onFrame(frame) {
    switch (frame.type) {
      case 'hello':
        if (state.lastSeq === null) {
          state.lastSeq = frame.seq;
          loadState();
        }
        break;
      case 'reset':
        // The hub no longer has every event after our last seq: reload.
        state.lastSeq = frame.seq;
        if (state.loading) {
          state.reloadRequested = true;
        } else {
          loadState();
        }
        break;
      default:
        if (typeof frame.seq === 'number' && (state.lastSeq === null || frame.seq > state.lastSeq)) {
          state.lastSeq = frame.seq;
        }
        if (state.loading) {
          state.queue.push(frame);
        } else {
          applyEvent(frame);
        }
    }
    el('seq').textContent = `seq ${state.lastSeq === null ? '–' : state.lastSeq}`;
  }

  function setConn(kind, text) {
    const node = el('conn');
    node.className = `conn conn-${kind}`;
    node.textContent = text;
  }

  function showError(text) {
    const node = el('error');
    node.textContent = text;
    node.hidden = !text;
  }

  // ---- Alerts ----

  function announce(inc) {
    const banner = el('alert');
    banner.classList.remove('flash');
    // Reading offsetWidth restarts the CSS animation.
    void banner.offsetWidth;
    banner.classList.add('flash');
    if (sound) {
      beep();
    }
    if (!dirty.newIds) {
      dirty.newIds = new Set();
    }
    dirty.newIds.add(inc.id);
  }

  function beep() {
    const now = sound.currentTime;
    for (const start of [0, 0.3]) {
      const osc = sound.createOscillator();
      const gain = sound.createGain();
      osc.frequency.value = 880;
      gain.gain.setValueAtTime(0.25, now + start);
      gain.gain.exponentialRampToValueAtTime(0.001, now + start + 0.2);
      osc.connect(gain).connect(sound.destination);
      osc.start(now + start);
      osc.stop(now + start + 0.2);
    }
  }

  function toggleSound() {
    const button = el('sound');
    if (sound) {
      sound.close();
      sound = null;
    } else {
      // Browsers allow audio only after a user gesture, such as this click.
      sound = new AudioContext();
      beep();
    }
    button.setAttribute('aria-pressed', sound ? 'true' : 'false');
    button.textContent = sound ? 'Sound on' : 'Sound off';
  }

  // ---- Rendering ----

  function cell(tr, text, className) {
    const td = document.createElement('td');
    td.textContent = text;
    if (className) {
      td.className = className;
    }
    tr.appendChild(td);
    return td;
  }

  function badge(parent, inc) {
    const span = document.createElement('span');
    span.className = `badge badge-${inc.state}`;
    span.textContent = inc.state.toUpperCase();
    parent.appendChild(span);
  }

  function sortedIncidents() {
    return [...state.incidents.values()].sort((a, b) => time(b.opened_at) - time(a.opened_at) || b.id - a.id);
  }

  function renderIncidents() {
    const list = sortedIncidents();
    const table = el('incidents');
    const body = table.tBodies[0];
    const rows = document.createDocumentFragment();
    const fresh = dirty.newIds || new Set();
    for (const inc of list) {
      const tr = document.createElement('tr');
      tr.className = `state-${inc.state}` + (fresh.has(inc.id) ? ' new' : '') + (inc.cancel_requested ? ' cancel-requested' : '');
      // Waiting time counts from when the agent received the SOS, not from the hub's commit, which an outage delays.
      tr.dataset.opened = inc.received_at || inc.opened_at;
      cell(tr, String(inc.id));
      badge(cell(tr, ''), inc);
      cell(tr, inc.vehicle_id);
      cell(tr, inc.kind);
      cell(tr, formatManila(inc.pressed_at));
      cell(tr, formatAge(inc.received_at || inc.opened_at), 'age');
      cell(tr, inc.has_location ? `${fixed(inc.lat, 5)}, ${fixed(inc.lon, 5)}` : 'no position');
      cell(tr, String(inc.presses || 1));
      cell(tr, inc.cancel_requested ? 'YES – confirm with driver' : 'no', inc.cancel_requested ? 'cancel-yes' : '');
      cell(tr, inc.region || '–');
      cell(tr, inc.note || '', 'note');
      cell(tr, inc.assigned_to || '–');
      cell(tr, '', 'actions').appendChild(actionButtons(inc));
      rows.appendChild(tr);
    }
    body.replaceChildren(rows);
    dirty.newIds = null;

    const open = list.filter((inc) => inc.state === 'open');
    table.hidden = list.length === 0;
    el('incidents-empty').hidden = list.length > 0;
    el('incident-count').textContent = String(list.length);
    el('incidents-title').parentElement.classList.toggle('has-open', open.length > 0);

    const banner = el('alert');
    if (open.length > 0) {
      const newest = open[0];
      banner.textContent = `${open.length} OPEN SOS – newest: vehicle ${newest.vehicle_id} (${newest.kind}) at ${formatManila(newest.pressed_at)} Manila`;
      banner.hidden = false;
      document.title = `(${open.length}) SOS – Xpress Ops Tower`;
    } else {
      banner.hidden = true;
      document.title = 'Xpress Ops Tower';
    }
  }

  function renderClosed() {
    const list = sortedClosed();
    const table = el('closed');
    const rows = document.createDocumentFragment();
    for (const inc of list) {
      const tr = document.createElement('tr');
      tr.className = `state-${inc.state}`;
      cell(tr, String(inc.id));
      badge(cell(tr, ''), inc);
      cell(tr, inc.vehicle_id);
      cell(tr, inc.kind);
      cell(tr, formatManila(inc.pressed_at));
      cell(tr, formatManila(closedAt(inc)));
      cell(tr, inc.cancel_requested ? 'requested' : '–');
      cell(tr, inc.assigned_to || '–');
      cell(tr, '', 'actions').appendChild(actionButtons(inc));
      rows.appendChild(tr);
    }
    table.tBodies[0].replaceChildren(rows);
    table.hidden = list.length === 0;
    el('closed-empty').hidden = list.length > 0;
    el('closed-count').textContent = String(list.length);
  }

  const vehicleRows = new Map(); // vehicle_id → tr

  function vehicleRow(id) {
    let tr = vehicleRows.get(id);
    if (!tr) {
      tr = document.createElement('tr');
      for (let i = 0; i < 8; i++) cell(tr, '');
      vehicleRows.set(id, tr);
    }
    return tr;
  }

  function sosVehicles() {
    const ids = new Set();
    for (const inc of state.incidents.values()) ids.add(inc.vehicle_id);
    return ids;
  }

  function renderVehicles() {
    const body = el('vehicles').tBodies[0];
    const ids = [...state.vehicles.keys()].sort();
    const sos = sosVehicles();
    for (const [id, tr] of vehicleRows) {
      if (!state.vehicles.has(id)) {
        tr.remove();
        vehicleRows.delete(id);
      }
    }
    ids.forEach((id, i) => {
      const v = state.vehicles.get(id);
      const tr = vehicleRow(id);
      const c = tr.cells;
      c[0].textContent = id;
      c[1].textContent = v.region || '–';
      c[2].textContent = fixed(v.fix.lat, 5);
      c[3].textContent = fixed(v.fix.lon, 5);
      c[4].textContent = fixed(v.fix.speed_kmh, 1);
      c[5].textContent = formatManila(v.fix.ts);
      c[6].textContent = formatAge(v.fix.ts);
      let online = 'unknown';
      if (v.online !== undefined) {
        online = v.online ? 'yes' : 'no';
      }
      c[7].textContent = online;
      c[7].className = `online-${online}`;
      tr.classList.toggle('stale', Date.now() - time(v.fix.ts) > STALE_AFTER_MS);
      tr.classList.toggle('sos', sos.has(id));
      if (body.rows[i] !== tr) {
        body.insertBefore(tr, body.rows[i] || null);
      }
    });
    el('vehicles').hidden = ids.length === 0;
    el('vehicles-empty').hidden = ids.length > 0;
    el('vehicle-count').textContent = String(ids.length);
  }

  function renderAgents() {
    const list = el('agents');
    const items = document.createDocumentFragment();
    const agents = [...state.agents.values()].sort((a, b) => a.agent_id.localeCompare(b.agent_id));
    for (const a of agents) {
      const li = document.createElement('li');
      const name = document.createElement('span');
      name.textContent = `${a.agent_id}${a.region ? ' (' + a.region + ')' : ''}`;
      const st = document.createElement('span');
      st.className = a.connected ? 'agent-up' : 'agent-down';
      st.textContent = a.connected ? 'connected' : 'DISCONNECTED';
      const since = document.createElement('span');
      since.className = 'agent-since';
      since.textContent = a.since ? `since ${formatManila(a.since)}` : '';
      li.append(name, st, since);
      items.appendChild(li);
    }
    list.replaceChildren(items);
    el('agents-empty').hidden = agents.length > 0;
  }

  function renderPlot() {
    const canvas = el('plot');
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 480;
    const height = canvas.clientHeight || 360;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    const points = [];
    for (const v of state.vehicles.values()) {
      points.push({ lat: v.fix.lat, lon: v.fix.lon, kind: v.online ? 'online' : 'offline', label: v.vehicle_id });
    }
    for (const inc of state.incidents.values()) {
      if (inc.has_location) points.push({ lat: inc.lat, lon: inc.lon, kind: 'sos', label: `SOS #${inc.id}` });
    }
    if (points.length === 0) {
      el('plot-bounds').textContent = 'No positions to plot.';
      return;
    }

    let minLat = Infinity, maxLat = -Infinity, minLon = Infinity, maxLon = -Infinity;
    for (const p of points) {
      minLat = Math.min(minLat, p.lat); maxLat = Math.max(maxLat, p.lat);
      minLon = Math.min(minLon, p.lon); maxLon = Math.max(maxLon, p.lon);
    }
    // Equirectangular projection: a degree of longitude is cos(lat) as long as one of latitude.
    const kx = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
    const spanX = Math.max((maxLon - minLon) * kx, 0.01);
    const spanY = Math.max(maxLat - minLat, 0.01);
    const pad = 24;
    const scale = Math.min((width - 2 * pad) / spanX, (height - 2 * pad) / spanY);
    const cx = (minLon + maxLon) / 2, cy = (minLat + maxLat) / 2;
    const project = (p) => [width / 2 + (p.lon - cx) * kx * scale, height / 2 - (p.lat - cy) * scale];

    const colors = { online: '#1b7f3b', offline: '#9aa1ab', sos: '#c62828' };
    for (const kind of ['offline', 'online', 'sos']) {
      ctx.fillStyle = colors[kind];
      ctx.strokeStyle = colors[kind];
      for (const p of points) {
        if (p.kind !== kind) continue;
        const [x, y] = project(p);
        ctx.beginPath();
        ctx.arc(x, y, kind === 'sos' ? 6 : 3, 0, 2 * Math.PI);
        ctx.fill();
        if (kind === 'sos') {
          ctx.beginPath();
          ctx.lineWidth = 2;
          ctx.arc(x, y, 11, 0, 2 * Math.PI);
          ctx.stroke();
        }
      }
    }
    // Labels stay readable only for a small fleet.
    if (points.length <= LABEL_MAX_POINTS) {
      ctx.font = '11px system-ui, sans-serif';
      ctx.fillStyle = '#1c1f24';
      for (const p of points) {
        const [x, y] = project(p);
        const right = x < width - 90;
        ctx.textAlign = right ? 'left' : 'right';
        ctx.fillText(p.label, x + (right ? 14 : -14), p.kind === 'sos' ? y + 14 : y - 4);
      }
    }
    el('plot-bounds').textContent =
      `lat ${minLat.toFixed(4)} to ${maxLat.toFixed(4)}, lon ${minLon.toFixed(4)} to ${maxLon.toFixed(4)}`;
  }

  function render() {
    if (dirty.incidents) renderIncidents();
    if (dirty.closed) renderClosed();
    if (dirty.vehicles) renderVehicles();
    if (dirty.agents) renderAgents();
    if (dirty.plot) renderPlot();
    dirty.incidents = dirty.closed = dirty.vehicles = dirty.agents = dirty.plot = false;
  }

  function tick() {
    el('clock').textContent = `${formatManila(Date.now())} Manila`;
    // Ages change every second even without events.
    dirty.vehicles = true;
    for (const tr of el('incidents').tBodies[0].rows) {
      tr.querySelector('.age').textContent = formatAge(tr.dataset.opened);
    }
    updateReconnectLabel();
  }

  // ---- Session ----

  // toLogin leaves for the sign-in page, which shows why (reason, or
  // nothing when empty).
  function toLogin(reason) {
    if (session.leaving) {
      return;
    }
    session.leaving = true;
    clearTimeout(conn.timer);
    if (conn.ws) {
      conn.ws.close();
    }
    location.replace(reason ? `/login.html?reason=${encodeURIComponent(reason)}` : '/login.html');
  }

  // readSession reads the session into session.current. It returns true when
  // the operator is signed in, false after leaving for the sign-in page on
  // 401 with reason, and throws when the hub cannot be reached.
  async function readSession(reason) {
    const res = await fetch('/api/v1/session', { headers: { Accept: 'application/json' }, cache: 'no-store' });
    if (res.status === 401) {
      toLogin(reason);
      return false;
    }
    if (!res.ok) {
      throw new Error(`${res.status} ${res.statusText}`);
    }
    session.current = await res.json();
    renderWho();
    return true;
  }

  // checkSession is readSession for the reconnect: a hub that cannot be
  // reached counts as signed in, so the stream keeps retrying.
  async function checkSession() {
    try {
      return await readSession('expired');
    } catch (err) {
      return true;
    }
  }

  function renderWho() {
    const current = session.current || {};
    el('who-name').textContent = current.display_name || current.operator || '–';
    el('who-name').title = current.operator || '';
    el('who-role').textContent = current.role || '';
    const regions = Array.isArray(current.regions) ? current.regions : [];
    el('who-regions').textContent = regions.includes('*') || current.role === 'admin'
      ? 'all regions'
      : regions.join(', ');
    // "Assign to me" depends on the operator.
    dirty.incidents = dirty.closed = true;
  }

  function operatorName() {
    return session.current ? session.current.operator : '';
  }

  // csrfHeaders returns the headers of a state-changing request.
  function csrfHeaders(headers) {
    return Object.assign({ 'X-CSRF-Token': session.current ? session.current.csrf_token : '' }, headers);
  }

  async function signOut() {
    const button = el('sign-out');
    button.disabled = true;
    try {
      const res = await fetch('/api/v1/session', { method: 'DELETE', headers: csrfHeaders({ Accept: 'application/json' }), cache: 'no-store' });
      if (!res.ok && res.status !== 401) {
        let body = null;
        try {
          body = await res.json();
        } catch (e) {
          body = null;
        }
        throw new Error(body && body.error ? body.error : `${res.status} ${res.statusText}`);
      }
      toLogin('signed-out');
    } catch (err) {
      showError(`Could not sign out (${err.message}).`);
      button.disabled = false;
    }
  }

  // start reads the session, retrying while the hub cannot be reached,
  // then opens the stream.
  async function start() {
    let delay = BACKOFF_MIN_MS;
    for (;;) {
      try {
        // A first visit without a session needs no explanation.
        if (await readSession('')) {
          showError('');
          connect();
        }
        return;
      } catch (err) {
        showError(`Could not reach the hub (${err.message}); retrying in ${Math.round(delay / 1000)} s.`);
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 2, BACKOFF_MAX_MS);
      }
    }
  }

  // ---- Incident actions ----

  // Dialog actions: the route, its JSON field and the dialog's texts.
  const DIALOG_ACTIONS = {
    dispatch: {
      path: 'dispatch', field: 'detail', title: 'Dispatch responders',
      label: 'What was dispatched (unit, from where, expected arrival)', submit: 'Record dispatch',
      done: 'dispatch recorded',
    },
    note: { path: 'notes', field: 'text', title: 'Add a note', label: 'Note', submit: 'Add note', done: 'note added' },
    resolve: {
      path: 'resolve', field: 'resolution', title: 'Resolve incident',
      label: 'Resolution (what happened, how it ended)', submit: 'Resolve', done: 'resolved',
    },
    cancel: {
      path: 'cancel', field: 'reason', title: 'Cancel as false alarm',
      label: 'Why this is a false alarm', submit: 'Cancel as false alarm', danger: true,
      done: 'cancelled as a false alarm',
    },
  };

  // A driver may be forced to cancel, so a cancel request alone never closes an SOS.
  const CANCEL_WARNING = 'The driver asked to cancel this SOS, but a driver can be forced to cancel. '
    + 'Speak to the driver directly and make sure they are safe before you confirm, '
    + 'and write down how you confirmed it.';

  function findIncident(id) {
    return state.incidents.get(id) || state.closed.get(id) || null;
  }

  // actionList returns the buttons an incident in its state offers.
  function actionList(inc) {
    const active = ACTIVE_STATES.includes(inc.state);
    const list = [];
    if (inc.state === 'open') {
      list.push({ action: 'acknowledge', label: 'Acknowledge', className: 'primary' });
    }
    if (active && inc.assigned_to !== operatorName()) {
      list.push({ action: 'assign', label: 'Assign to me' });
    }
    if (inc.state === 'open' || inc.state === 'acknowledged') {
      list.push({ action: 'dispatch', label: 'Dispatch…' });
    }
    list.push({ action: 'note', label: 'Add note…' });
    if (active) {
      list.push({ action: 'resolve', label: 'Resolve…' });
      list.push(inc.cancel_requested
        ? { action: 'cancel', label: 'Confirm driver cancel…', className: 'danger' }
        : { action: 'cancel', label: 'Cancel as false alarm…' });
    }
    list.push({ action: 'details', label: 'Details' });
    return list;
  }

  function actionButtons(inc) {
    const box = document.createElement('div');
    box.className = 'row-actions';
    for (const a of actionList(inc)) {
      const button = document.createElement('button');
      button.type = 'button';
      button.textContent = a.label;
      button.dataset.action = a.action;
      button.dataset.id = String(inc.id);
      if (a.className) {
        button.className = a.className;
      }
      box.appendChild(button);
    }
    return box;
  }

  // postAction sends one action and applies the incident it returns. It
  // throws an Error with the hub's message when the action fails.
  async function postAction(id, path, body) {
    const res = await fetch(`/api/v1/incidents/${id}/${path}`, {
      method: 'POST',
      headers: csrfHeaders({ 'Content-Type': 'application/json', Accept: 'application/json' }),
      body: JSON.stringify(body),
      cache: 'no-store',
    });
    if (res.status === 401) {
      toLogin('expired');
      throw new Error('Your session ended: sign in again.');
    }
    let data = null;
    try {
      data = await res.json();
    } catch (e) {
      data = null;
    }
    if (!res.ok) {
      if (res.status === 409) {
        // Another operator acted first: show the incident as it is now.
        refreshIncident(id);
      }
      throw new Error(data && data.error ? data.error : `${res.status} ${res.statusText}`);
    }
    applyIncident(data.incident, false);
    // Show the result now rather than at the next render tick.
    render();
    return data;
  }

  async function refreshIncident(id) {
    try {
      const body = await getJSON(`/api/v1/incidents/${id}`);
      applyIncident(body.incident, false);
    } catch (err) {
      showError(`Could not reload incident ${id} (${err.message}).`);
    }
  }

  function showNotice(text) {
    const node = el('notice');
    node.textContent = text;
    node.hidden = !text;
    clearTimeout(showNotice.timer);
    if (text) {
      showNotice.timer = setTimeout(() => { node.hidden = true; }, NOTICE_MS);
    }
  }

  async function runDirect(action, id, button) {
    const path = action === 'acknowledge' ? 'acknowledge' : 'assign';
    const body = action === 'acknowledge' ? {} : { assignee: operatorName() };
    if (button) button.disabled = true;
    try {
      await postAction(id, path, body);
      showNotice(action === 'acknowledge' ? `Incident ${id} acknowledged.` : `Incident ${id} assigned to you.`);
      showError('');
    } catch (err) {
      showError(`Incident ${id}: ${err.message}`);
    } finally {
      if (button) button.disabled = false;
    }
  }

  function onActionClick(event) {
    const button = event.target.closest('button[data-action]');
    if (!button) {
      return;
    }
    const id = Number(button.dataset.id);
    const action = button.dataset.action;
    if (action === 'details') {
      openDetail(id);
    } else if (action === 'acknowledge' || action === 'assign') {
      runDirect(action, id, button);
    } else if (DIALOG_ACTIONS[action]) {
      openActionDialog(action, id);
    }
  }

  function describe(inc) {
    return `#${inc.id} · vehicle ${inc.vehicle_id} · ${inc.kind} · ${inc.state}`
      + ` · pressed ${formatManila(inc.pressed_at)} Manila`;
  }

  function openActionDialog(action, id) {
    const spec = DIALOG_ACTIONS[action];
    const inc = findIncident(id);
    const confirmDriver = action === 'cancel' && inc && inc.cancel_requested;
    el('action-title').textContent = confirmDriver ? "Confirm the driver's cancel request" : spec.title;
    el('action-summary').textContent = inc ? describe(inc) : `#${id}`;
    const warning = el('action-warning');
    warning.textContent = confirmDriver ? CANCEL_WARNING : '';
    warning.hidden = !confirmDriver;
    el('action-label').textContent = confirmDriver ? 'How you confirmed the driver is safe' : spec.label;
    const text = el('action-text');
    text.value = '';
    const submit = el('action-submit');
    submit.textContent = confirmDriver ? 'Confirm cancel' : spec.submit;
    submit.className = spec.danger ? 'danger' : 'primary';
    submit.disabled = false;
    setDialogError('');
    dialog.pending = { action, id };
    el('action-dialog').showModal();
    text.focus();
  }

  function setDialogError(text) {
    const node = el('action-error');
    node.textContent = text;
    node.hidden = !text;
  }

  async function submitActionDialog(event) {
    event.preventDefault();
    const pending = dialog.pending;
    if (!pending) {
      return;
    }
    const spec = DIALOG_ACTIONS[pending.action];
    const text = el('action-text').value.trim();
    if (!text) {
      setDialogError('This field is required: it goes into the audit trail.');
      el('action-text').focus();
      return;
    }
    const submit = el('action-submit');
    submit.disabled = true;
    try {
      await postAction(pending.id, spec.path, { [spec.field]: text });
      dialog.pending = null;
      el('action-dialog').close();
      showNotice(`Incident ${pending.id}: ${spec.done}.`);
      showError('');
    } catch (err) {
      setDialogError(err.message);
    } finally {
      submit.disabled = false;
    }
  }

  // ---- Incident detail and audit trail ----

  const EVENT_LABELS = {
    opened: 'SOS opened',
    repeat_press: 'Pressed again',
    cancel_requested: 'Driver asked to cancel',
    acknowledged: 'Acknowledged',
    assigned: 'Assigned',
    dispatched: 'Dispatched',
    note: 'Note',
    resolved: 'Resolved',
    cancelled: 'Cancelled as false alarm',
    escalated: 'Escalated',
    notification: 'Notification',
  };

  // What each escalation level of the dispatcher means.
  const ESCALATION_LABELS = {
    0: 'Level 0: nobody notified yet',
    1: 'Level 1: responders, emergency contacts and webhooks notified',
    2: 'Level 2: not acknowledged in time, supervisors alerted by SMS and email',
    3: 'Level 3: still not acknowledged, supervisors called',
  };

  // Why a notification was queued, by the dispatcher's reason.
  const REASON_LABELS = {
    'opened:responder': 'responder',
    'opened:emergency-contact': 'emergency contact',
    'opened:webhook': 'webhook',
    'escalation:supervisors': 'supervisor alert',
    'escalation:voice': 'supervisor call',
    'sent-by-agent': 'sent by an agent',
  };

  function escalationLabel(level) {
    return ESCALATION_LABELS[level || 0] || `Level ${level}`;
  }

  function openDetail(id) {
    dialog.detailId = id;
    const inc = findIncident(id);
    el('detail-title').textContent = `Incident #${id}`;
    if (inc) {
      renderDetail(inc, null);
    }
    const box = el('detail-dialog');
    if (!box.open) {
      box.showModal();
    }
    loadDetail(id);
  }

  async function loadDetail(id) {
    try {
      const body = await getJSON(`/api/v1/incidents/${id}`);
      if (dialog.detailId === id) {
        renderDetail(body.incident, body.events || []);
      }
    } catch (err) {
      const node = el('detail-error');
      node.textContent = `Could not load the audit trail (${err.message}).`;
      node.hidden = false;
    }
    loadNotifications(id);
  }

  async function loadNotifications(id) {
    let body;
    try {
      body = await getJSON(`/api/v1/incidents/${id}/notifications`);
    } catch (err) {
      if (dialog.detailId === id) {
        el('detail-notifications-empty').textContent = `Could not load the notifications (${err.message}).`;
        el('detail-notifications-empty').hidden = false;
      }
      return;
    }
    if (dialog.detailId === id) {
      renderNotifications(body.escalation_level, body.notifications || []);
    }
  }

  function renderNotifications(level, list) {
    el('detail-escalation').textContent = escalationLabel(level);
    const empty = el('detail-notifications-empty');
    empty.textContent = 'No notifications yet.';
    empty.hidden = list.length > 0;
    const table = el('detail-notifications');
    table.hidden = list.length === 0;
    const rows = document.createDocumentFragment();
    for (const n of list) {
      const tr = document.createElement('tr');
      tr.className = `notification-${n.state}`;
      cell(tr, n.channel);
      cell(tr, n.address);
      cell(tr, REASON_LABELS[n.reason] || n.reason);
      const stateText = n.state === 'pending' && n.next_attempt_at
        ? `pending, next try ${formatManila(n.next_attempt_at)}`
        : n.state + (n.sent_by && n.sent_by !== 'hub' ? ` by ${n.sent_by}` : '');
      cell(tr, stateText, 'state');
      cell(tr, String(n.attempts));
      cell(tr, formatManila(n.updated_at));
      cell(tr, n.last_error || '', 'detail');
      rows.appendChild(tr);
    }
    table.tBodies[0].replaceChildren(rows);
  }

  function renderDetail(inc, events) {
    el('detail-title').textContent = `Incident #${inc.id}: vehicle ${inc.vehicle_id}, ${inc.kind}, ${inc.state}`;
    const cancel = el('detail-cancel');
    const pendingCancel = inc.cancel_requested && ACTIVE_STATES.includes(inc.state);
    cancel.textContent = pendingCancel ? `DRIVER ASKED TO CANCEL. ${CANCEL_WARNING}` : '';
    cancel.hidden = !pendingCancel;

    const facts = [
      ['State', inc.state],
      ['Assigned to', inc.assigned_to || 'nobody'],
      ['Region', inc.region || '–'],
      ['Location', inc.has_location ? `${fixed(inc.lat, 5)}, ${fixed(inc.lon, 5)}` : 'no position'],
      ['Presses', String(inc.presses || 1)],
      ['Driver asked to cancel', inc.cancel_requested ? 'yes' : 'no'],
      ['Driver note', inc.note || '–'],
      ['Pressed', formatManila(inc.pressed_at)],
      ['Received by agent', formatManila(inc.received_at)],
      ['Opened at hub', formatManila(inc.opened_at)],
      ['Acknowledged', formatManila(inc.acknowledged_at)],
      ['Dispatched', formatManila(inc.dispatched_at)],
      ['Resolved', formatManila(inc.resolved_at)],
      ['Cancelled', formatManila(inc.cancelled_at)],
      ['Escalation', escalationLabel(inc.escalation_level)],
    ];
    const dl = document.createDocumentFragment();
    for (const [name, value] of facts) {
      const dt = document.createElement('dt');
      dt.textContent = name;
      const dd = document.createElement('dd');
      dd.textContent = value;
      dl.append(dt, dd);
    }
    el('detail-facts').replaceChildren(dl);
    el('detail-actions').replaceChildren(actionButtons(inc));
    // The detail dialog is already open, so Details only reloads it.
    const details = el('detail-actions').querySelector('button[data-action="details"]');
    if (details) {
      details.textContent = 'Reload';
    }

    if (events === null) {
      return;
    }
    el('detail-error').hidden = true;
    const rows = document.createDocumentFragment();
    for (const ev of events) {
      const tr = document.createElement('tr');
      tr.className = `event-${ev.type}`;
      cell(tr, formatManila(ev.at));
      cell(tr, EVENT_LABELS[ev.type] || ev.type);
      cell(tr, ev.actor);
      cell(tr, ev.detail || '', 'detail');
      rows.appendChild(tr);
    }
    el('detail-events').tBodies[0].replaceChildren(rows);
  }

  function setupActions() {
    // One listener serves every action button, including those rendered later.
    document.addEventListener('click', onActionClick);
    el('action-form').addEventListener('submit', submitActionDialog);
    el('action-close').addEventListener('click', () => el('action-dialog').close());
    el('action-dialog').addEventListener('close', () => { dialog.pending = null; });
    el('detail-close').addEventListener('click', () => el('detail-dialog').close());
    el('detail-dialog').addEventListener('close', () => { dialog.detailId = null; });
  }

  document.addEventListener('DOMContentLoaded', () => {
    el('sound').addEventListener('click', toggleSound);
    el('sign-out').addEventListener('click', signOut);
    setupActions();
    window.addEventListener('resize', () => { dirty.plot = true; });
    setInterval(render, RENDER_INTERVAL_MS);
    setInterval(tick, 1000);
    tick();
    start();
  });
})();
