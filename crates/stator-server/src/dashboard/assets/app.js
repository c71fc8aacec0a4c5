// The stator dashboard: plain JavaScript, no library, no build step.
//
// Data: GET /v1/nodes, /v1/services, /v1/partitions every REFRESH_MS and at once after
// an event that changes them; events from /v1/events/recent, then /v1/events (SSE read
// with fetch, since EventSource cannot send the bearer token). Rendering is keyed: a
// table row is created once per key and only cells whose text changed are written, so
// an update never redraws the page.
'use strict';

const REFRESH_MS = 1000;          // poll interval; events trigger a refresh sooner
const EVENT_REFRESH_DELAY_MS = 50; // coalesces a burst of events into one refresh
const EVENTS_SHOWN = 200;         // events kept in the feed (older ones are dropped)
const STALE_AFTER_MS = 3000;      // the status turns amber when data is older than this
const STREAM_RETRY_MAX_MS = 5000; // longest wait before reconnecting the event stream
const TOKEN_KEY = 'stator-token';
const FIRST_FILL_ROWS = 150;      // rows of a new table painted at once; the rest a task later

const state = {
  token: null,
  nodes: [], services: [], partitions: [], recent: [],
  loadedAt: 0, error: null, firstPaintMs: null,
  refreshTimer: null, pending: null, streamAbort: null,
  simFiles: null,
};

// ---------- small helpers ----------

const $ = (sel, root = document) => root.querySelector(sel);
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}
function fmtAge(ms) {
  if (ms == null) return '-';
  if (ms < 1000) return ms + 'ms';
  if (ms < 60000) return (ms / 1000).toFixed(1) + 's';
  return Math.round(ms / 60000) + 'm';
}
function fmtOps(x) { return x == null ? '-' : (x >= 100 ? Math.round(x).toString() : x.toFixed(1)); }
// 0: no operation in the window, so no latency to speak of.
function fmtUs(us) { return !us ? '-' : (us >= 1000 ? (us / 1000).toFixed(1) + 'ms' : us + 'µs'); }
function fmtBytes(b) {
  if (b == null) return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(1) : b) + units[i];
}
function fmtTime(ms) { return new Date(ms).toLocaleTimeString(); }
// Distinct colours for nodes (slot map, leader placement) and policies (sim charts).
const PALETTE = ['#2d5bd7', '#e07b00', '#1f8a4c', '#8e44ad', '#00838f', '#c2185b',
  '#6d4c41', '#7cb342', '#5c6bc0', '#f4b400', '#455a64', '#d81b60'];
function colorOf(name) {
  // Nodes by their rank among the names known, so few nodes never share a colour.
  const names = [...new Set(state.nodes.map(n => n.name))].sort();
  let index = names.indexOf(name);
  if (index < 0) {
    index = 0;
    for (const c of name) index = (index * 31 + c.charCodeAt(0)) >>> 0;
  }
  return PALETTE[index % PALETTE.length];
}
function badge(text, cls) { return { text, cls: 'badge ' + (cls || text) }; }
const link = (text, href) => ({ text, href });

// ---------- token and API ----------

class AuthError extends Error {}

function takeTokenFromFragment() {
  const m = location.hash.match(/(?:^#|&)token=([^&]*)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    // Out of the address bar, the history and any screenshot.
    history.replaceState(null, '', location.pathname + '#/');
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    cache: 'no-store',
    headers: { ...(options.headers || {}), Authorization: 'Bearer ' + state.token },
  });
  if (response.status === 401) throw new AuthError('the API refused this token');
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(`${message} (HTTP ${response.status})`);
  }
  return response.status === 204 ? null : response.json();
}

// ---------- login ----------

function showLogin(message) {
  stopLive();
  $('#app').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = message || '';
  $('#status').textContent = 'signed out';
  $('#login-token').focus();
}

// No separate check of the token: the first refresh is the check (one round trip less
// before the first paint), and a 401 from any call brings the form back.
function signIn(token) {
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  $('#login').hidden = true;
  $('#app').hidden = false;
  startLive();
}

function refused() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.loadedAt = 0;
  showLogin('Token refused: the API answered 401.');
}

// ---------- live data ----------

function startLive() {
  stopLive();
  route();
  refresh();
  loadEvents();
}

function stopLive() {
  clearTimeout(state.refreshTimer);
  if (state.streamAbort) state.streamAbort.abort();
  state.streamAbort = null;
}

function scheduleRefresh(delayMs) {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(refresh, delayMs);
}

async function refresh() {
  // A refresh asked for while one runs may be about newer news: run once more after.
  if (state.pending) { state.again = true; return state.pending; }
  state.pending = (async () => {
    try {
      const [nodes, services, partitions] = await Promise.all([
        api('/v1/nodes'), api('/v1/services'), api('/v1/partitions'),
      ]);
      Object.assign(state, { nodes, services, partitions, loadedAt: Date.now(), error: null });
      render();
    } catch (e) {
      if (e instanceof AuthError) { refused(); return; }
      state.error = e.message;
    } finally {
      state.pending = null;
      showStatus();
    }
    scheduleRefresh(state.again ? 0 : REFRESH_MS);
    state.again = false;
  })();
  return state.pending;
}

function showStatus() {
  const status = $('#status');
  const age = Date.now() - state.loadedAt;
  if (state.error) {
    status.textContent = 'disconnected: ' + state.error;
    status.className = 'status down';
  } else {
    status.textContent = 'live · data ' + fmtAge(age) + ' old';
    status.className = 'status' + (age > STALE_AFTER_MS ? ' stale' : '');
  }
}

// Events that change what the tables show: refresh at once instead of at the next poll.
const REFRESHING_EVENTS = new Set([
  'node_joined', 'node_rejoined', 'node_lost', 'node_draining', 'node_drained', 'leader_changed',
  'partition_reset',
  'replica_placed', 'replica_moved', 'service_applied', 'service_deleted',
  'drain_blocked', 'instance_placed', 'instance_removed', 'instance_oom_killed', 'job_finished',
  'lagged',
]);

async function loadEvents() {
  try {
    const recent = await api('/v1/events/recent');
    state.recent = recent.slice(-EVENTS_SHOWN);
    $('#events').replaceChildren(...state.recent.slice().reverse().map(eventItem));
  } catch (e) {
    if (e instanceof AuthError) return;
  }
  streamEvents(0);
}

async function streamEvents(attempt) {
  const abort = new AbortController();
  state.streamAbort = abort;
  const indicator = $('#events-state');
  try {
    const response = await fetch('/v1/events', {
      headers: { Authorization: 'Bearer ' + state.token, Accept: 'text/event-stream' },
      signal: abort.signal, cache: 'no-store',
    });
    if (response.status === 401) { refused(); return; }
    if (!response.ok) throw new Error('HTTP ' + response.status);
    indicator.textContent = '· live';
    attempt = 0;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split('\n').filter(l => l.startsWith('data:')).map(l => l.slice(5).trimStart()).join('\n');
        if (data) onEvent(JSON.parse(data));
      }
    }
  } catch (e) {
    if (abort.signal.aborted) return;
  }
  if (state.streamAbort !== abort) return;
  indicator.textContent = '· reconnecting';
  const delay = Math.min(STREAM_RETRY_MAX_MS, 250 * 2 ** attempt);
  setTimeout(() => { if (state.streamAbort === abort) streamEvents(attempt + 1); }, delay);
}

function onEvent(event) {
  state.recent.push(event);
  if (state.recent.length > EVENTS_SHOWN) state.recent.shift();
  const list = $('#events');
  list.prepend(eventItem(event));
  while (list.children.length > EVENTS_SHOWN) list.lastChild.remove();
  if (REFRESHING_EVENTS.has(event.type)) scheduleRefresh(EVENT_REFRESH_DELAY_MS);
  const detail = $('#view-events');
  if (detail && detail.matches_(event)) detail.prepend(eventItem(event));
}

function nodeName(id) {
  const node = state.nodes.find(n => n.id === id);
  return node ? node.name : 'node-' + id;
}

function describeEvent(e) {
  const where = e.service != null ? `${e.service}${e.partition != null ? '/' + e.partition : ''}` : '';
  switch (e.type) {
    case 'leader_changed': return `${where} leader ${e.leader == null ? 'none' : nodeName(e.leader)} (term ${e.term})`;
    case 'replica_moved': return `${where} ${nodeName(e.from)} → ${nodeName(e.to)} (${e.reason})`;
    case 'replica_placed': return `${where} on ${e.members.map(nodeName).join(', ')}`;
    case 'replica_resized': return `${where} on ${nodeName(e.node_id)} cpu ${e.cpu_millis}m`;
    case 'drain_blocked': return `${e.name}: ${e.reasons.join('; ')}`;
    case 'instance_placed': return `${where} ${e.id} on ${nodeName(e.node_id)}`;
    case 'instance_finished': return `${where} ${e.id} ${e.succeeded ? 'succeeded' : 'failed'}`;
    case 'node_requested': return `pool ${e.pool} zone ${e.zone}`;
    case 'lagged': return `missed ${e.missed} events`;
    default: return [e.name, where, e.id, e.phase, e.generation != null ? 'generation ' + e.generation : '']
      .filter(Boolean).join(' ');
  }
}

function eventItem(e) {
  return el('li', { 'data-type': e.type },
    el('span', { class: 't', text: fmtTime(e.time_ms) }),
    el('span', { class: 'k', text: e.type.replace(/_/g, ' ') }),
    el('span', { text: describeEvent(e) }));
}

// ---------- keyed tables ----------

// A cell is a string, { text, cls } (a span), { text, href } (a link), or a DOM node
// that the row keeps (a bar, a button).
function setCell(td, cell) {
  if (cell instanceof Node) {
    if (td.firstChild !== cell || td.childNodes.length !== 1) td.replaceChildren(cell);
    return;
  }
  const c = cell !== null && typeof cell === 'object' ? cell : { text: cell == null ? '-' : String(cell) };
  const tag = c.href ? 'A' : (c.cls ? 'SPAN' : null);
  if (!tag) {
    if (td.firstElementChild) td.replaceChildren();
    if (td.textContent !== c.text) td.textContent = c.text;
    return;
  }
  let inner = td.firstChild;
  if (!inner || inner.tagName !== tag || td.childNodes.length !== 1) {
    inner = document.createElement(tag);
    td.replaceChildren(inner);
  }
  if (c.href && inner.getAttribute('href') !== c.href) inner.setAttribute('href', c.href);
  if (inner.className !== (c.cls || '')) inner.className = c.cls || '';
  if (inner.textContent !== c.text) inner.textContent = c.text;
}

// Builds (once) or updates a table: columns [{ key, title, num }], rows with a `key`.
function syncTable(container, id, columns, rows, rowKey, cellsOf) {
  let table = container.querySelector('#' + id);
  if (!table) {
    table = el('table', { id });
    table.append(el('thead', {}, el('tr', {}, ...columns.map(c => el('th', { text: c.title })))), el('tbody'));
    container.append(table);
  }
  const body = table.tBodies[0];
  clearTimeout(table.restTimer);
  // A long first fill paints its first rows now and builds the rest off the document
  // in the next task, inserted at once. A sync that comes first cancels that and
  // creates whatever is missing itself.
  if (body.rows.length === 0 && rows.length > FIRST_FILL_ROWS) {
    body.append(buildRows(columns, rows.slice(0, FIRST_FILL_ROWS), rowKey, cellsOf));
    table.restTimer = setTimeout(() => {
      body.append(buildRows(columns, rows.slice(FIRST_FILL_ROWS), rowKey, cellsOf));
    }, 0);
    return table;
  }
  // A first fill is built off the document and inserted once: one style and layout
  // pass for all its rows instead of one per row.
  const fresh = body.rows.length === 0 ? document.createDocumentFragment() : null;
  const existing = new Map();
  for (const tr of body.rows) existing.set(tr.dataset.key, tr);
  let previous = null;
  for (const row of rows) {
    const key = rowKey(row);
    let tr = existing.get(key);
    if (tr) existing.delete(key);
    else tr = newRow(columns, key);
    const cells = cellsOf(row, tr);
    columns.forEach((c, i) => setCell(tr.cells[i], cells[c.key]));
    if (fresh) { fresh.append(tr); continue; }
    // Move only rows that are out of place.
    const expected = previous ? previous.nextSibling : body.firstChild;
    if (expected !== tr) body.insertBefore(tr, expected);
    previous = tr;
  }
  if (fresh) body.append(fresh);
  for (const tr of existing.values()) tr.remove();
  return table;
}

function newRow(columns, key) {
  return el('tr', { 'data-key': key }, ...columns.map(c => el('td', { 'data-col': c.key, class: c.num ? 'num' : '' })));
}

function buildRows(columns, rows, rowKey, cellsOf) {
  const fragment = document.createDocumentFragment();
  for (const row of rows) {
    const tr = newRow(columns, rowKey(row));
    const cells = cellsOf(row, tr);
    columns.forEach((c, i) => setCell(tr.cells[i], cells[c.key]));
    fragment.append(tr);
  }
  return fragment;
}

// ---------- views ----------

function route() {
  const hash = location.hash || '#/';
  const [, page, arg] = hash.match(/^#\/?([^/]*)\/?(.*)$/) || [];
  for (const a of document.querySelectorAll('header nav a')) {
    a.classList.toggle('active', a.dataset.nav === (page || 'overview'));
  }
  const view = $('#view');
  view.replaceChildren();
  view.dataset.page = page || 'overview';
  view.dataset.arg = decodeURIComponent(arg || '');
  render();
}

function render() {
  const view = $('#view');
  if (!view || $('#app').hidden) return;
  const page = view.dataset.page;
  if (page === 'sim') return renderSim(view);
  if (!state.loadedAt) return;
  if (page === 'service') renderService(view, view.dataset.arg);
  else if (page === 'node') renderNode(view, view.dataset.arg);
  else renderOverview(view);
  if (state.firstPaintMs === null) {
    state.firstPaintMs = Math.round(performance.now());
  }
}

function section(view, id, title) {
  let s = view.querySelector('#sec-' + id);
  if (!s) {
    s = el('section', { id: 'sec-' + id }, el('h2', { text: title }));
    view.append(s);
  }
  return s;
}

function summaryCards(view) {
  const s = section(view, 'summary', 'Cluster');
  const ready = state.nodes.filter(n => n.state === 'ready').length;
  const withLeader = state.partitions.filter(p => p.leader).length;
  const met = state.partitions.filter(p => p.replication_factor_met).length;
  const ops = state.partitions.reduce((sum, p) => sum + (p.load ? p.load.ops_per_sec : 0), 0);
  const cards = [
    ['nodes', `${ready}/${state.nodes.filter(n => n.state !== 'lost').length}`, 'nodes ready'],
    ['services', state.services.length, 'services'],
    ['leaders', `${withLeader}/${state.partitions.length}`, 'partitions with a leader'],
    ['rf', `${met}/${state.partitions.length}`, 'replication factor met'],
    ['ops', fmtOps(ops), 'ops/s (leaders)'],
  ];
  let box = s.querySelector('.cards');
  if (!box) {
    box = el('div', { class: 'cards' }, ...cards.map(([k, , l]) =>
      el('div', { class: 'card', 'data-card': k }, el('div', { class: 'v' }), el('div', { class: 'l', text: l }))));
    s.append(box);
  }
  for (const [k, v] of cards) {
    const target = box.querySelector(`[data-card="${k}"] .v`);
    if (target.textContent !== String(v)) target.textContent = v;
  }
}

function usageBar(used, total, tr, key) {
  let holder = tr && tr._bars && tr._bars[key];
  if (!holder) {
    holder = el('span', {}, el('span', { class: 'bar' }, el('i')), el('span'));
    if (tr) { tr._bars = tr._bars || {}; tr._bars[key] = holder; }
  }
  const pct = total ? Math.min(100, Math.round(100 * used / total)) : 0;
  const fill = holder.firstChild.firstChild;
  if (fill.style.width !== pct + '%') fill.style.width = pct + '%';
  const text = `${used}/${total}`;
  if (holder.lastChild.textContent !== text) holder.lastChild.textContent = text;
  return holder;
}

function actionButton(tr, key, label, onClick) {
  tr._buttons = tr._buttons || {};
  if (!tr._buttons[key]) {
    tr._buttons[key] = el('button', { type: 'button', class: 'danger act', text: label, onclick: onClick });
  }
  return tr._buttons[key];
}

async function confirmAndRun(question, method, path, done) {
  if (!document.body.classList.contains('actions-on')) return;
  if (!window.confirm(question)) return;
  try {
    await api(path, { method });
    done();
    scheduleRefresh(0);
  } catch (e) {
    window.alert(e.message);
  }
}

const NODE_COLUMNS = [
  { key: 'name', title: 'NODE' }, { key: 'state', title: 'STATE' }, { key: 'zone', title: 'ZONE' },
  { key: 'pool', title: 'POOL' }, { key: 'cpu', title: 'CPU REQUESTED (m)' },
  { key: 'memory', title: 'MEMORY (MiB)' }, { key: 'replicas', title: 'REPLICAS', num: true },
  { key: 'leaders', title: 'LEADERS', num: true }, { key: 'ops', title: 'OPS/S', num: true },
  { key: 'age', title: 'HEARTBEAT', num: true }, { key: 'waits', title: 'WAITING ON' },
  { key: 'act', title: '' },
];

function nodeCells(n, tr) {
  return {
    name: link(n.name, '#/node/' + encodeURIComponent(n.name)),
    state: badge(n.state),
    zone: n.zone, pool: n.pool,
    cpu: usageBar(n.cpu_requested_millis || 0, n.cpu_millis, tr, 'cpu'),
    memory: usageBar(n.memory_requested_mib || 0, n.memory_mib, tr, 'mem'),
    replicas: String(n.replicas), leaders: String(n.leaders), ops: fmtOps(n.ops_per_sec),
    age: n.state === 'lost' ? '-' : fmtAge(n.last_heartbeat_age_ms),
    waits: { text: (n.drain_waits || []).join('; '), cls: 'waits' },
    act: n.state === 'ready'
      ? actionButton(tr, 'drain', 'drain', () => confirmAndRun(
        `Drain ${n.name}? Every replica and instance on it moves to other nodes.`,
        'POST', `/v1/nodes/${encodeURIComponent(n.name)}/drain`, () => {}))
      : '',
  };
}

function sortedNodes() {
  const order = { ready: 0, draining: 1, drained: 2, lost: 3 };
  return state.nodes.slice().sort((a, b) => order[a.state] - order[b.state] || a.name.localeCompare(b.name) || b.id - a.id);
}

const PARTITION_COLUMNS = [
  { key: 'name', title: 'PARTITION' }, { key: 'slots', title: 'SLOTS' }, { key: 'leader', title: 'LEADER' },
  { key: 'term', title: 'TERM', num: true }, { key: 'members', title: 'MEMBERS' }, { key: 'rf', title: 'RF MET' },
  { key: 'ops', title: 'OPS/S', num: true }, { key: 'p99', title: 'P99', num: true },
  { key: 'lag', title: 'LAG', num: true }, { key: 'age', title: 'REPORTED', num: true },
];

function memberText(p) {
  return p.members.map(m => {
    const role = m.role || '-';
    return `${m.name}(${role}${m.alive ? '' : ',lost'}${m.designed ? '' : ',leaving'})`;
  }).join(' ');
}

function partitionCells(p) {
  const load = p.load;
  return {
    name: link(`${p.service}/${p.partition}`, '#/service/' + encodeURIComponent(p.service)),
    slots: `${p.slots.start}-${p.slots.end_inclusive}`,
    leader: p.leader ? p.leader.name : badge('none'),
    term: p.leader ? String(p.leader.term) : '-',
    members: memberText(p),
    rf: p.replication_factor_met ? badge('yes') : badge('no'),
    ops: load ? fmtOps(load.ops_per_sec) : '-',
    p99: load ? fmtUs(load.p99_us) : '-',
    lag: load ? String(load.apply_lag_entries) : '-',
    age: load ? fmtAge(load.observed_age_ms) + ' ago' : '-',
  };
}
const partitionKey = p => `${p.service}/${p.partition}`;

const SERVICE_COLUMNS = [
  { key: 'name', title: 'SERVICE' }, { key: 'kind', title: 'KIND' },
  { key: 'partitions', title: 'PARTITIONS', num: true }, { key: 'replicas', title: 'REPLICAS', num: true },
  { key: 'leaders', title: 'WITH LEADER', num: true }, { key: 'replicated', title: 'RF MET', num: true },
  { key: 'instances', title: 'INSTANCES READY', num: true }, { key: 'act', title: '' },
];

function serviceCells(s, tr) {
  const replicated = s.kind === 'replicated';
  return {
    name: link(s.name, '#/service/' + encodeURIComponent(s.name)),
    kind: s.kind,
    partitions: replicated ? String(s.spec.partitions) : '-',
    replicas: replicated ? String(s.spec.replicas) : '-',
    leaders: replicated ? String(s.status.partitions_with_leader) : '-',
    replicated: replicated ? String(s.status.partitions_replicated) : '-',
    instances: replicated ? '-' : `${s.status.instances_ready}/${s.status.instances_assigned}`,
    act: actionButton(tr, 'delete', 'delete', () => confirmAndRun(
      `Delete service ${s.name}? Its replicas and their state are removed. This cannot be undone.`,
      'DELETE', `/v1/services/${encodeURIComponent(s.name)}`, () => { location.hash = '#/'; })),
  };
}

function renderOverview(view) {
  summaryCards(view);
  syncTable(section(view, 'nodes', 'Nodes'), 'nodes', NODE_COLUMNS, sortedNodes(), n => n.name + '#' + n.id, nodeCells);
  syncTable(section(view, 'services', 'Services'), 'services', SERVICE_COLUMNS, state.services, s => s.name, serviceCells);
  const sec = section(view, 'partitions', 'Partitions');
  let box = sec.querySelector('.scroll');
  if (!box) { box = el('div', { class: 'scroll' }); sec.append(box); }
  syncTable(box, 'partitions', PARTITION_COLUMNS, state.partitions, partitionKey, partitionCells);
}

function eventsSection(view, title, matches) {
  const s = section(view, 'events', title);
  let list = s.querySelector('#view-events');
  if (!list) {
    list = el('ol', { id: 'view-events', class: 'feed' });
    list.matches_ = matches;
    list.append(...state.recent.filter(matches).reverse().map(eventItem));
    s.append(list);
  }
}

function keyValues(view, id, pairs) {
  const s = section(view, id, 'Details');
  syncTable(s, id + '-table', [{ key: 'k', title: '' }, { key: 'v', title: '' }], pairs, p => p[0], p => ({ k: p[0], v: p[1] }));
}

function renderService(view, name) {
  const service = state.services.find(s => s.name === name);
  if (!view.querySelector('h1')) view.prepend(el('h1', { text: 'service/' + name }));
  if (!service) {
    section(view, 'missing', '').textContent = `No service named ${name}.`;
    return;
  }
  const partitions = state.partitions.filter(p => p.service === name);
  keyValues(view, 'svc', [
    ['kind', service.kind], ['generation', String(service.generation)],
    ['partitions × replicas', service.kind === 'replicated' ? `${service.spec.partitions} × ${service.spec.replicas}` : '-'],
    ['with a leader', String(service.status.partitions_with_leader)],
    ['replication factor met', String(service.status.partitions_replicated)],
    ['unplaced', String(service.status.partitions_unplaced)],
    ['instances ready', `${service.status.instances_ready}/${service.status.instances_assigned}`],
    ['app', JSON.stringify(service.spec.app)],
  ]);
  if (partitions.length) {
    slotMap(section(view, 'slots', 'Slot map (16384 slots, coloured by leader node)'), partitions);
    leaderPlacement(section(view, 'placement', 'Leader placement'), partitions);
    syncTable(section(view, 'parts', 'Partitions'), 'service-partitions', PARTITION_COLUMNS, partitions, partitionKey, partitionCells);
  }
  eventsSection(view, 'Events', e => e.service === name);
}

function slotMap(s, partitions) {
  let map = s.querySelector('.slotmap');
  if (!map) {
    map = el('div', { class: 'slotmap', id: 'slotmap' });
    s.append(map, el('div', { class: 'legend' }));
  }
  while (map.children.length < partitions.length) map.append(el('div'));
  while (map.children.length > partitions.length) map.lastChild.remove();
  const leaders = new Set();
  partitions.forEach((p, i) => {
    const cell = map.children[i];
    const width = (p.slots.end_inclusive - p.slots.start + 1) / 16384 * 100;
    const leader = p.leader ? p.leader.name : null;
    if (leader) leaders.add(leader);
    const color = leader ? colorOf(leader) : '#c62828';
    const title = `partition ${p.partition}: slots ${p.slots.start}-${p.slots.end_inclusive}, leader ${leader || 'none'}`;
    if (cell.style.flexBasis !== width + '%') { cell.style.flexBasis = width + '%'; cell.style.flexGrow = '0'; }
    if (cell.style.background !== color) cell.style.background = color;
    if (cell.title !== title) cell.title = title;
  });
  const legend = s.querySelector('.legend');
  const text = [...leaders].sort().join(',');
  if (legend.dataset.text !== text) {
    legend.dataset.text = text;
    legend.replaceChildren(...[...leaders].sort().map(n => {
      const i = el('i'); i.style.background = colorOf(n);
      return el('span', {}, i, n);
    }), el('span', { class: 'muted', text: 'red: no leader' }));
  }
}

function leaderPlacement(s, partitions) {
  const rows = state.nodes.filter(n => n.state !== 'lost' || partitions.some(p => p.members.some(m => m.node_id === n.id)));
  syncTable(s, 'placement', [
    { key: 'node', title: 'NODE' }, { key: 'zone', title: 'ZONE' }, { key: 'state', title: 'STATE' },
    { key: 'leaders', title: 'LEADERS', num: true }, { key: 'members', title: 'MEMBER OF', num: true },
    { key: 'list', title: 'LEADS' },
  ], rows, n => n.name + '#' + n.id, n => {
    const leads = partitions.filter(p => p.leader && p.leader.node_id === n.id).map(p => p.partition);
    return {
      node: link(n.name, '#/node/' + encodeURIComponent(n.name)), zone: n.zone, state: badge(n.state),
      leaders: String(leads.length),
      members: String(partitions.filter(p => p.members.some(m => m.node_id === n.id)).length),
      list: leads.join(' '),
    };
  });
}

function renderNode(view, name) {
  const node = state.nodes.filter(n => n.name === name).sort((a, b) => (a.state === 'lost') - (b.state === 'lost') || b.id - a.id)[0];
  if (!view.querySelector('h1')) view.prepend(el('h1', { text: 'node/' + name }));
  if (!node) { section(view, 'missing', '').textContent = `No node named ${name}.`; return; }
  keyValues(view, 'node', [
    ['id', String(node.id)], ['state', node.state], ['zone', node.zone], ['pool', node.pool],
    ['cpu requested / capacity', `${node.cpu_requested_millis || 0}m / ${node.cpu_millis}m`],
    ['memory requested / capacity', `${node.memory_requested_mib || 0}Mi / ${node.memory_mib}Mi`],
    ['price per hour', '$' + node.price_per_hour],
    ['transport', node.transport_addr],
    ['last heartbeat', node.state === 'lost' ? 'lost' : fmtAge(node.last_heartbeat_age_ms) + ' ago'],
    ['drain waiting on', (node.drain_waits || []).join('; ') || '-'],
    ['labels', Object.entries(node.labels || {}).map(([k, v]) => `${k}=${v}`).join(', ') || '-'],
  ]);
  const hosted = state.partitions.filter(p => p.members.some(m => m.node_id === node.id));
  syncTable(section(view, 'replicas', 'Replicas'), 'node-replicas', [
    { key: 'name', title: 'PARTITION' }, { key: 'role', title: 'ROLE' }, { key: 'leader', title: 'LEADER' },
    { key: 'applied', title: 'APPLIED', num: true }, { key: 'rf', title: 'RF MET' },
  ], hosted, partitionKey, p => {
    const me = p.members.find(m => m.node_id === node.id);
    return {
      name: link(partitionKey(p), '#/service/' + encodeURIComponent(p.service)),
      role: me.role ? badge(me.role) : '-', leader: p.leader ? p.leader.name : badge('none'),
      applied: me.applied_index == null ? '-' : String(me.applied_index),
      rf: p.replication_factor_met ? badge('yes') : badge('no'),
    };
  });
  eventsSection(view, 'Events', e => e.node_id === node.id || e.leader === node.id || e.from === node.id || e.to === node.id);
}

// ---------- simulator report (files from `stator sim --out DIR`) ----------

function renderSim(view) {
  if (view.querySelector('#sim-files')) return;
  view.append(
    el('h1', { text: 'Simulator report' }),
    el('p', { class: 'muted', text: 'Open summary.json and the <policy>.csv files that `stator sim --compare --out DIR` wrote. They are read in this browser; nothing is uploaded.' }),
    el('input', { type: 'file', id: 'sim-files', multiple: '', accept: '.json,.csv', onchange: e => loadSimFiles(e.target.files) }),
    el('div', { id: 'sim-report' }));
  if (state.simFiles) showSim(state.simFiles);
}

async function loadSimFiles(files) {
  const loaded = { summary: null, series: {} };
  for (const file of files) {
    const text = await file.text();
    if (file.name.endsWith('.json')) loaded.summary = JSON.parse(text);
    else if (file.name.endsWith('.csv')) loaded.series[file.name.replace(/\.csv$/, '')] = parseCsv(text);
  }
  state.simFiles = loaded;
  showSim(loaded);
}

function parseCsv(text) {
  const [head, ...lines] = text.trim().split('\n');
  const names = head.split(',');
  return lines.map(l => Object.fromEntries(l.split(',').map((v, i) => [names[i], Number(v)])));
}

function showSim({ summary, series }) {
  const out = $('#sim-report');
  out.replaceChildren();
  if (summary) {
    const policies = summary.policies || { run: summary };
    const names = Object.keys(policies);
    const fields = [...new Set(names.flatMap(n => Object.keys(policies[n])))];
    const s = el('section', {}, el('h2', { text: 'Summary per policy' }));
    out.append(s);
    syncTable(s, 'sim-summary', [{ key: 'field', title: 'FIELD' }, ...names.map(n => ({ key: n, title: n, num: true }))],
      fields, f => f, f => Object.fromEntries([['field', f], ...names.map(n => [n, fmtValue(policies[n][f])])]));
    if (summary.ratios) {
      const r = el('section', {}, el('h2', { text: 'Ratios (stator / baseline)' }));
      out.append(r);
      syncTable(r, 'sim-ratios', [{ key: 'k', title: 'METRIC' }, { key: 'v', title: 'RATIO', num: true }],
        Object.entries(summary.ratios), e => e[0], e => ({ k: e[0], v: fmtValue(e[1]) }));
    }
  }
  for (const column of ['nodes', 'cost_usd', 'slo_violating']) {
    if (Object.keys(series).length) out.append(el('h2', { text: column + ' over time' }), chart(series, column));
  }
}

function fmtValue(v) {
  if (v == null) return '-';
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : v.toFixed(3);
  return typeof v === 'object' ? JSON.stringify(v) : String(v);
}

function chart(series, column) {
  const width = 720, height = 200, pad = 30;
  const all = Object.values(series).flat();
  const maxT = Math.max(1, ...all.map(r => r.t_s));
  const maxY = Math.max(1e-9, ...all.map(r => r[column]));
  const lines = Object.entries(series).map(([name, rows]) => {
    const points = rows.map(r => `${(pad + (width - 2 * pad) * r.t_s / maxT).toFixed(1)},${(height - pad - (height - 2 * pad) * r[column] / maxY).toFixed(1)}`).join(' ');
    return `<polyline fill="none" stroke="${colorOf(name)}" stroke-width="1.5" points="${points}"></polyline>`;
  }).join('');
  const legend = Object.keys(series).map((n, i) => `<text x="${pad + i * 140}" y="14" font-size="12" fill="${colorOf(n)}">${n.replace(/[<>&]/g, '')}</text>`).join('');
  const holder = el('div');
  holder.innerHTML = `<svg class="chart" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">${legend}` +
    `<text x="${pad}" y="${height - 8}" font-size="11">0</text><text x="${width - pad - 40}" y="${height - 8}" font-size="11">${Math.round(maxT)} s</text>` +
    `<text x="2" y="${pad}" font-size="11">${fmtValue(maxY)}</text>${lines}</svg>`;
  return holder;
}

// ---------- start ----------

// For the browser test and the benchmark: render a synthetic cluster of `count`
// partitions from scratch; the milliseconds until the first paint's layout is done,
// and until every row is in.
window.statorDashboard = {
  firstPaintMs: () => state.firstPaintMs,
  renderSynthetic(count) {
    const nodes = Array.from({ length: 10 }, (_, i) => ({
      id: i + 1, name: 'node-' + (i + 1), state: 'ready', zone: 'z' + (i % 3), pool: 'default',
      cpu_millis: 4000, memory_mib: 8192, price_per_hour: 0, labels: {}, transport_addr: '127.0.0.1:' + (9000 + i),
      last_heartbeat_age_ms: 100, replicas: count * 3 / 10, leaders: count / 10, instances: 0,
      cpu_requested_millis: 2000, memory_requested_mib: 1024, ops_per_sec: 100,
    }));
    const partitions = Array.from({ length: count }, (_, i) => {
      const members = [0, 1, 2].map(k => nodes[(i + k) % 10]);
      return {
        service: 'svc', partition: i, group: i, slots: { start: i, end_inclusive: i },
        leader: { node_id: members[0].id, name: members[0].name, addr: '', term: 1 },
        members: members.map((n, k) => ({ node_id: n.id, name: n.name, addr: '', role: k ? 'follower' : 'leader', designed: true, alive: true, applied_index: 10 })),
        member_addrs: [], replicas: 3, replication_factor_met: true,
        load: { ops_per_sec: 10, p99_us: 900, applied_index: 10, state_bytes: 1000, apply_lag_entries: 0, observed_age_ms: 200 },
      };
    });
    const services = [{ name: 'svc', kind: 'replicated', id: 1, generation: 1, spec: { partitions: count, replicas: 3 },
      status: { partitions_with_leader: count, partitions_replicated: count, partitions_unplaced: 0, instances_assigned: 0, instances_ready: 0, completions_succeeded: 0 } }];
    stopLive();
    const started = performance.now();
    Object.assign(state, { nodes, services, partitions, loadedAt: Date.now() });
    const view = $('#view');
    view.replaceChildren();
    view.dataset.page = 'overview';
    renderOverview(view);
    void document.body.offsetHeight; // force style and layout
    const firstMs = performance.now() - started;
    return new Promise(resolve => setTimeout(() => setTimeout(() => {
      void document.body.offsetHeight;
      resolve({ first_ms: firstMs, full_ms: performance.now() - started,
        rows: document.querySelectorAll('#partitions tbody tr').length });
    }, 0), 0));
  },
};

function start() {
  $('#login-form').addEventListener('submit', e => {
    e.preventDefault();
    signIn($('#login-token').value.trim());
  });
  $('#logout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    showLogin('Signed out.');
  });
  const toggle = $('#actions-toggle');
  document.body.classList.add('hide-actions');
  toggle.addEventListener('change', () => {
    document.body.classList.toggle('actions-on', toggle.checked);
    document.body.classList.toggle('hide-actions', !toggle.checked);
  });
  window.addEventListener('hashchange', () => {
    if (/token=/.test(location.hash)) { const t = takeTokenFromFragment(); if (t) signIn(t); return; }
    route();
  });
  setInterval(showStatus, 500);
  const token = takeTokenFromFragment();
  if (token) signIn(token); else showLogin();
}

start();
