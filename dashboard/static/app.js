// Operators' dashboard: active SOS incidents, vehicle positions and agent
// connections, kept live from the hub's event stream.
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
    agents: new Map(), // agent_id → agent state
    lastSeq: null, // seq of the last event applied or announced, null before the first hello
    loading: false,
    reloadRequested: false, // a reset arrived while the state was loading
    queue: [], // events received while the REST state loads
    alerted: new Set(), // incident ids already announced
  };

  const conn = { ws: null, attempt: 0, timer: null, retryAt: 0 };
  let sound = null; // AudioContext once the operator enables sound
  const dirty = { incidents: false, vehicles: false, agents: false, plot: false };

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
    const old = state.incidents.get(inc.id);
    if (old && time(old.updated_at) > time(inc.updated_at)) {
      return;
    }
    if (ACTIVE_STATES.includes(inc.state)) {
      state.incidents.set(inc.id, inc);
      if (opened && inc.state === 'open' && !state.alerted.has(inc.id)) {
        state.alerted.add(inc.id);
        announce(inc);
      }
    } else {
      state.incidents.delete(inc.id);
    }
    dirty.incidents = dirty.plot = dirty.vehicles = true;
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
        const [vehicles, incidents, agents] = await Promise.all([
          getJSON('/api/v1/vehicles'),
          getJSON('/api/v1/incidents?state=' + ACTIVE_STATES.join(',') + '&limit=1000'),
          getJSON('/api/v1/agents'),
        ]);
        state.vehicles.clear();
        state.incidents.clear();
        state.agents.clear();
        for (const v of vehicles.vehicles || []) applyPosition(v);
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
    dirty.incidents = dirty.vehicles = dirty.agents = dirty.plot = true;
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
    ws.onclose = () => {
      if (conn.ws !== ws) {
        return;
      }
      conn.ws = null;
      scheduleReconnect();
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
      tr.className = `state-${inc.state}` + (fresh.has(inc.id) ? ' new' : '');
      // Waiting time counts from when the agent received the SOS, not from the hub's commit, which an outage delays.
      tr.dataset.opened = inc.received_at || inc.opened_at;
      cell(tr, String(inc.id));
      const st = cell(tr, '');
      const badge = document.createElement('span');
      badge.className = `badge badge-${inc.state}`;
      badge.textContent = inc.state.toUpperCase();
      st.appendChild(badge);
      cell(tr, inc.vehicle_id);
      cell(tr, inc.kind);
      cell(tr, formatManila(inc.pressed_at));
      cell(tr, formatAge(inc.received_at || inc.opened_at), 'age');
      cell(tr, inc.has_location ? `${fixed(inc.lat, 5)}, ${fixed(inc.lon, 5)}` : 'no position');
      cell(tr, String(inc.presses || 1));
      cell(tr, inc.cancel_requested ? 'YES – confirm with driver' : 'no', inc.cancel_requested ? 'cancel-yes' : '');
      cell(tr, inc.region || '–');
      cell(tr, inc.note || '', 'note');
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
    if (dirty.vehicles) renderVehicles();
    if (dirty.agents) renderAgents();
    if (dirty.plot) renderPlot();
    dirty.incidents = dirty.vehicles = dirty.agents = dirty.plot = false;
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

  document.addEventListener('DOMContentLoaded', () => {
    el('sound').addEventListener('click', toggleSound);
    window.addEventListener('resize', () => { dirty.plot = true; });
    setInterval(render, RENDER_INTERVAL_MS);
    setInterval(tick, 1000);
    tick();
    connect();
  });
})();
