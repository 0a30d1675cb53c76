// The fleet console (fleet/console/, docs/console.md): one page, hash routes, every figure from /api/v1.
// No framework, no build step, nothing fetched but the API. Charts are inline SVG drawn here.
'use strict';

const TOKEN_KEY = 'fleet-console-token';
const REFRESH_KEY = 'fleet-console-refresh-ms'; // auto-refresh period (default 30 s)
const PAGE = 50; // device-list page size: the console never asks for the whole fleet
const METRICS = [
  ['fps', 'frame rate'], ['freeze_rate', 'freeze rate'], ['loss', 'loss'],
  ['rtt_ms', 'round trip'], ['cpu', 'CPU'], ['temp_c', 'temperature'],
];
const state = { who: null, whoReady: Promise.resolve(), gen: 0, live: null };

// ---- small helpers ------------------------------------------------------------------------------
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}
const $ = (sel, root) => (root || document).querySelector(sel);
const num = (v, d = 1) => (v === null || v === undefined || Number.isNaN(v) ? '–' : Number(v).toFixed(d));
function ago(ts) {
  if (!ts) return '–';
  const s = Date.now() / 1000 - ts;
  if (s < 0) return 'in ' + dur(-s);
  return dur(s) + ' ago';
}
function dur(s) {
  if (s === null || s === undefined) return '–';
  s = Math.max(0, s);
  if (s < 60) return Math.round(s) + ' s';
  if (s < 3600) return Math.round(s / 60) + ' min';
  if (s < 86400) return (s / 3600).toFixed(1) + ' h';
  return (s / 86400).toFixed(1) + ' d';
}
const WHEN = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
function when(ts) { return ts ? WHEN.format(new Date(ts * 1000)) : '–'; }
function flash(text, bad) {
  const el = h('div', { class: bad ? 'bad' : '' }, text);
  $('#flash').append(el);
  setTimeout(() => el.remove(), bad ? 8000 : 4000);
}
function pill(text, cls) { return h('span', { class: 'pill ' + (cls || text) }, text); }
function sev(s) { return h('span', { class: 'sev ' + s }, s); }
const canAct = () => state.who && (state.who.role === 'operator' || state.who.role === 'admin');
function actBtn(label, onclick, cls) {
  const b = h('button', { type: 'button', class: cls || '', onclick }, label);
  if (!canAct()) { b.disabled = true; b.title = 'needs the operator role'; }
  return b;
}

// ---- the API ------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || ('HTTP ' + status));
    this.status = status; this.code = e.code || String(status);
  }
}
async function api(path, opts) {
  opts = opts || {};
  const headers = { Accept: 'application/json' };
  const tok = sessionStorage.getItem(TOKEN_KEY);
  if (tok) headers.Authorization = 'Bearer ' + tok;
  let body;
  if (opts.body !== undefined) { headers['Content-Type'] = 'application/json'; body = JSON.stringify(opts.body); }
  const resp = await fetch('/api/v1' + path, { method: opts.method || 'GET', headers, body });
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (resp.status === 401) { askToken((data && data.error && data.error.message) || 'a token is required'); }
  if (!resp.ok && !(data && data.ok === false)) throw new ApiError(resp.status, data);
  if (data && data.ok === false) throw new ApiError(resp.status, data);
  return data;
}
function askToken(why) {
  const dlg = $('#login');
  $('#login-why').textContent = why;
  if (!dlg.open) dlg.showModal();
}
async function loadWho() {
  try {
    state.who = await api('/whoami');
    $('#who').textContent = state.who.principal + ' · ' + state.who.role;
  } catch (e) {
    state.who = null;
    $('#who').textContent = e.status === 401 ? 'no token' : 'API unreachable';
  }
  $('#signout').hidden = !sessionStorage.getItem(TOKEN_KEY);
}

// ---- charts (inline SVG) ------------------------------------------------------------------------
const SVGNS = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...kids) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const kid of kids) el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  return el;
}
// points: [{t, avg, min, max}] over [from, to]; a gap of more than 1.5 steps breaks the line
function lineChart(series, opts) {
  const W = 320, H = 120, L = 34, R = 6, T = 8, B = 16;
  const pts = series.points || [];
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img' });
  const from = series.from, to = series.to, step = series.step_s || 60;
  let hi = Math.max(opts.floor || 0, ...pts.map(p => p.max));
  if (!(hi > 0)) hi = 1;
  hi *= 1.1;
  const x = t => L + (W - L - R) * (t - from) / Math.max(1, to - from);
  const y = v => T + (H - T - B) * (1 - v / hi);
  svg.append(s('line', { x1: L, x2: W - R, y1: y(0), y2: y(0), stroke: '#444' }));
  svg.append(s('line', { x1: L, x2: W - R, y1: y(hi / 1.1), y2: y(hi / 1.1), stroke: '#2a2a2a' }));
  svg.append(s('text', { x: L - 4, y: y(hi / 1.1) + 3, 'text-anchor': 'end' }, num(hi / 1.1, hi > 20 ? 0 : 1)));
  svg.append(s('text', { x: L - 4, y: y(0) + 3, 'text-anchor': 'end' }, '0'));
  svg.append(s('text', { x: L, y: H - 3 }, when(from)));
  svg.append(s('text', { x: W - R, y: H - 3, 'text-anchor': 'end' }, 'now'));
  const runs = [];
  let run = [];
  for (const p of pts) {
    if (run.length && p.t - run[run.length - 1].t > 1.5 * step) { runs.push(run); run = []; }
    run.push(p);
  }
  if (run.length) runs.push(run);
  for (const r of runs) {
    const cx = p => x(p.t + step / 2);
    if (r.length === 1) {
      svg.append(s('circle', { cx: cx(r[0]), cy: y(r[0].avg), r: 2, fill: opts.color }));
      continue;
    }
    const band = r.map(p => `${cx(p)},${y(p.max)}`).concat(r.slice().reverse().map(p => `${cx(p)},${y(p.min)}`));
    svg.append(s('polygon', { points: band.join(' '), fill: opts.color, 'fill-opacity': 0.18 }));
    svg.append(s('polyline', { points: r.map(p => `${cx(p)},${y(p.avg)}`).join(' '), fill: 'none', stroke: opts.color, 'stroke-width': 1.5 }));
  }
  return svg;
}
// stacked hourly bars: layers [{values, color, label}]
function barChart(layers, opts) {
  const W = 320, H = 110, L = 26, B = 14, T = 6;
  const n = layers[0].values.length;
  const totals = Array.from({ length: n }, (_, i) => layers.reduce((a, l) => a + (l.values[i] || 0), 0));
  const hi = Math.max(1, ...totals);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img' });
  const bw = (W - L) / n;
  for (let i = 0; i < n; i++) {
    let base = H - B;
    for (const l of layers) {
      const v = l.values[i] || 0;
      if (!v) continue;
      const hgt = (H - B - T) * v / hi;
      base -= hgt;
      svg.append(s('rect', { x: L + i * bw + 1, y: base, width: Math.max(1, bw - 2), height: hgt, fill: l.color },
        s('title', {}, `${l.label}: ${v}`)));
    }
  }
  svg.append(s('text', { x: L - 4, y: T + 8, 'text-anchor': 'end' }, hi));
  svg.append(s('text', { x: L - 4, y: H - B, 'text-anchor': 'end' }, '0'));
  svg.append(s('text', { x: L, y: H - 2 }, `-${n} h`));
  svg.append(s('text', { x: W, y: H - 2, 'text-anchor': 'end' }, 'now'));
  return svg;
}
function sparkLine(values, color) {
  const W = 320, H = 110, L = 26, B = 14, T = 6;
  const known = values.filter(v => v !== null);
  const hi = Math.max(1, ...known) * 1.1;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img' });
  const bw = (W - L) / values.length;
  const pts = values.map((v, i) => (v === null ? null : `${L + (i + 0.5) * bw},${T + (H - B - T) * (1 - v / hi)}`)).filter(Boolean);
  if (pts.length) svg.append(s('polyline', { points: pts.join(' '), fill: 'none', stroke: color, 'stroke-width': 1.5 }));
  svg.append(s('text', { x: L - 4, y: T + 8, 'text-anchor': 'end' }, num(hi / 1.1, 1)));
  svg.append(s('text', { x: L - 4, y: H - B, 'text-anchor': 'end' }, '0'));
  svg.append(s('text', { x: L, y: H - 2 }, `-${values.length} h`));
  svg.append(s('text', { x: W, y: H - 2, 'text-anchor': 'end' }, 'now'));
  return svg;
}

// ---- overview -----------------------------------------------------------------------------------
async function viewOverview(main) {
  const ov = await api('/overview?hours=24');
  const d = ov.devices, al = ov.alerts;
  const cards = h('div', { class: 'cards' },
    h('div', { class: 'card' }, h('b', {}, 'devices'), h('span', { class: 'big', id: 'ov-total' }, d.total)),
    h('div', { class: 'card' }, h('b', {}, 'online'), h('span', { class: 'big', id: 'ov-online' }, d.online),
      h('div', { class: 'sub' }, d.total ? Math.round(100 * d.online / d.total) + ' %' : '')),
    h('div', { class: 'card' }, h('b', {}, 'offline'), h('span', { class: 'big', id: 'ov-offline' }, d.offline)),
    ['P1', 'P2', 'P3'].map(p => h('a', { href: '#/alerts', class: 'card ' + p, style: 'text-decoration:none;color:inherit' },
      h('b', {}, p + ' open'), h('span', { class: 'big', id: 'ov-' + p }, al[p].open),
      h('div', { class: 'sub' }, `${al[p].attention} need attention · ${al[p].acknowledged} acked · ${al[p].silenced} silenced`))),
  );
  const total = Math.max(1, d.total);
  const versions = h('table', { id: 'ov-versions' },
    h('tr', {}, h('th', {}, 'version'), h('th', {}, 'online'), h('th', {}, 'offline'), h('th', { style: 'width:40%' }, 'share')),
    ov.versions.map(v => h('tr', { class: 'click', 'data-version': v.version, onclick: () => { location.hash = '#/devices?version=' + encodeURIComponent(v.version); } },
      h('td', {}, v.version || '(none)'), h('td', {}, v.online), h('td', {}, v.offline),
      h('td', {}, h('div', { class: 'bar' }, h('i', { style: `width:${100 * v.online / total}%` }), h('i', { class: 'off', style: `width:${100 * v.offline / total}%` }))))));
  const groups = h('table', { id: 'ov-groups' },
    h('tr', {}, h('th', {}, 'group'), h('th', {}, 'online'), h('th', {}, 'offline')),
    ov.groups.map(g => h('tr', { class: 'click', onclick: () => { location.hash = '#/devices?group=' + encodeURIComponent(g.group); } },
      h('td', {}, g.group), h('td', {}, g.online), h('td', {}, g.offline))));
  const tta = h('table', { id: 'ov-tta' }, h('tr', {}, h('th', {}, 'severity'), h('th', {}, 'acks'), h('th', {}, 'median'), h('th', {}, 'p90')),
    ['P1', 'P2', 'P3'].map(p => { const t = ov.time_to_ack[p]; return h('tr', {}, h('td', {}, sev(p)), h('td', {}, t ? t.n : 0), h('td', { 'data-sev': p }, t ? dur(t.median_s) : '–'), h('td', {}, t ? dur(t.p90_s) : '–')); }));
  const tr = ov.trends;
  const colors = { P1: '#d9434b', P2: '#e0902e', P3: '#c8b43a' };
  main.replaceChildren(
    h('h2', {}, 'Fleet'), cards,
    h('div', { class: 'grid2' },
      h('div', { class: 'panel' }, h('h3', {}, 'versions'), versions),
      h('div', { class: 'panel' }, h('h3', {}, 'groups'), groups)),
    h('h2', {}, 'Trends, last 24 h (hourly)'),
    h('div', { class: 'grid3' },
      h('div', { class: 'chart', id: 'tr-raised' }, h('h3', {}, 'alerts raised'), barChart(['P1', 'P2', 'P3'].map(p => ({ values: tr.alerts_raised[p], color: colors[p], label: p })))),
      h('div', { class: 'chart', id: 'tr-offline' }, h('h3', {}, 'devices gone offline (still offline)'), barChart([{ values: tr.went_offline, color: '#7a2a2e', label: 'offline' }])),
      h('div', { class: 'chart', id: 'tr-acks' }, h('h3', {}, 'acknowledgements'), barChart([{ values: tr.acknowledged, color: '#4a8fe0', label: 'acks' }])),
      h('div', { class: 'chart', id: 'tr-freeze' }, h('h3', {}, 'groups\u2019 median freeze rate (%)'), sparkLine(tr.freeze_rate, '#e0902e'))),
    h('h2', {}, 'Time to acknowledge, last 7 days'), h('div', { class: 'panel' }, tta),
  );
}

// ---- devices ------------------------------------------------------------------------------------
async function viewDevices(main, q) {
  const params = new URLSearchParams();
  params.set('limit', PAGE);
  for (const k of ['prefix', 'online', 'severity', 'group', 'version', 'after']) if (q.get(k)) params.set(k, q.get(k));
  const page = await api('/devices?' + params);
  const form = h('form', { class: 'row', id: 'dev-filter', onsubmit: ev => {
    ev.preventDefault();
    const f = new FormData(ev.target), n = new URLSearchParams();
    for (const [k, v] of f) if (v) n.set(k, v);
    location.hash = '#/devices?' + n;
  } },
  h('input', { name: 'prefix', placeholder: 'id or name prefix', value: q.get('prefix') || '' }),
  h('select', { name: 'online' }, h('option', { value: '' }, 'online or not'), h('option', { value: 'true', selected: q.get('online') === 'true' }, 'online'), h('option', { value: 'false', selected: q.get('online') === 'false' }, 'offline')),
  h('select', { name: 'severity' }, h('option', { value: '' }, 'any alerts'), ['P1', 'P2', 'P3'].map(p => h('option', { value: p, selected: q.get('severity') === p }, 'with ' + p))),
  h('input', { name: 'group', placeholder: 'group', value: q.get('group') || '', size: 10 }),
  h('input', { name: 'version', placeholder: 'version', value: q.get('version') || '', size: 8 }),
  h('button', { type: 'submit', class: 'primary' }, 'Filter'));
  const rows = page.devices.map(d => h('tr', { class: 'click', 'data-id': d.id, onclick: () => { location.hash = '#/device/' + encodeURIComponent(d.id); } },
    h('td', {}, h('a', { href: '#/device/' + encodeURIComponent(d.id) }, d.id)), h('td', {}, d.name || ''), h('td', {}, d.group),
    h('td', {}, d.online ? pill('online', 'on') : pill('offline', 'off')), h('td', {}, d.version),
    ['P1', 'P2', 'P3'].map(p => h('td', {}, (d.alerts_by_severity || {})[p] ? sev(p) : '', ' ', (d.alerts_by_severity || {})[p] || '')),
    h('td', {}, ago(d.last_seen))));
  const nav = h('div', { class: 'row' },
    h('span', { id: 'dev-total' }, `${page.total} devices`), h('span', { class: 'muted' }, q.get('after') ? ` · after ${q.get('after')}` : ''),
    q.get('after') ? h('button', { type: 'button', onclick: () => history.back() }, '‹ Previous') : null,
    page.next ? h('button', { type: 'button', id: 'dev-next', onclick: () => { const n = new URLSearchParams(q); n.set('after', page.next); location.hash = '#/devices?' + n; } }, 'Next ›') : null);
  main.replaceChildren(h('h2', {}, 'Devices'), form, nav,
    h('div', { class: 'panel' }, h('table', { id: 'dev-table' },
      h('tr', {}, ['id', 'name', 'group', 'state', 'version', 'P1', 'P2', 'P3', 'last seen'].map(t => h('th', {}, t))), rows)));
}

// ---- one device ---------------------------------------------------------------------------------
function healthFigures(health) {
  const sys = health.system || {}, media = health.media || {}, video = media.video || {}, viewers = media.viewers || {};
  return [
    ['CPU', sys.cpu_pct !== undefined ? num(sys.cpu_pct) + ' %' : '–'],
    ['temperature', sys.temperature_c !== undefined ? num(sys.temperature_c) + ' °C' : '–'],
    ['memory used', sys.mem_used_pct !== undefined ? num(sys.mem_used_pct) + ' %' : '–'],
    ['disk free', sys.disk_free_pct !== undefined ? num(sys.disk_free_pct) + ' %' : '–'],
    ['Wi-Fi', sys.wifi_rssi_dbm !== undefined && sys.wifi_rssi_dbm !== null ? sys.wifi_rssi_dbm + ' dBm' : '–'],
    ['uptime', sys.uptime_s !== undefined ? dur(sys.uptime_s) : '–'],
    ['camera fps', video.fps !== undefined ? num(video.fps) : '–'],
    ['viewers', viewers.active !== undefined ? `${viewers.active} / ${viewers.max}` : '–'],
  ];
}
function kv(pairs, id) {
  return h('dl', { class: 'kv', id }, pairs.map(([k, v]) => [h('dt', {}, k), h('dd', { 'data-k': k }, v)]));
}
async function drawCharts(box, id, range) {
  const gen = state.gen;
  box.replaceChildren(...METRICS.map(([m, label]) => h('div', { class: 'chart', id: 'chart-' + m }, h('h3', {}, label, ' ', h('span', { class: 'val muted' }, '…')))));
  await Promise.all(METRICS.map(async ([m, label], i) => {
    const el = box.children[i];
    let series;
    try { series = await api(`/devices/${encodeURIComponent(id)}/series?metric=${m}&range=${range}`); } catch (e) {
      if (gen === state.gen) el.replaceChildren(h('h3', {}, label), h('p', { class: 'err small' }, e.message));
      return;
    }
    if (gen !== state.gen) return;
    const last = series.points.length ? series.points[series.points.length - 1].avg : null;
    el.setAttribute('data-points', series.points.length);
    el.setAttribute('data-last', last === null ? '' : last);
    el.replaceChildren(h('h3', {}, label, h('span', { class: 'val' }, last === null ? 'no data' : `${num(last)} ${series.unit}`)),
      lineChart(series, { color: ['#4a8fe0', '#e0902e', '#d9434b', '#9b7be0', '#3aa655', '#c8b43a'][i] }));
  }));
}
async function viewDevice(main, id, q) {
  const enc = encodeURIComponent(id);
  const [dev, sess] = await Promise.all([api('/devices/' + enc), api(`/devices/${enc}/sessions?limit=10`), state.whoReady]);
  const ident = dev.identity || {};
  const range = q.get('range') || '1h';
  const charts = h('div', { class: 'grid3', id: 'charts' });
  const seg = h('div', { class: 'row seg', id: 'ranges' }, ['1h', '24h', '7d'].map(r => h('button', { type: 'button', class: r === range ? 'on' : '', 'data-range': r, onclick: () => { location.hash = `#/device/${enc}?range=${r}`; } }, r)));
  const out = h('div', { id: 'action-out' });
  const sessions = h('table', { id: 'sessions' },
    h('tr', {}, ['started', 'client', 'transport', 'duration', 'connect', 'first frame', 'fps', 'freeze rate', 'loss', 'RTT', 'MOS', 'ended'].map(t => h('th', {}, t))),
    (sess.sessions || []).map(x => h('tr', { 'data-session': x.session },
      h('td', {}, when(x.started)), h('td', {}, x.client || '–'), h('td', {}, x.transport || ''),
      h('td', {}, dur(x.duration_s)), h('td', {}, x.connected ? num(x.connect_ms, 0) + ' ms' : 'never'),
      h('td', {}, x.ttff_ms !== null && x.ttff_ms !== undefined ? num(x.ttff_ms, 0) + ' ms' : '–'),
      h('td', {}, num(x.fps_mean)), h('td', { class: 'freeze' }, x.freeze_rate !== null && x.freeze_rate !== undefined ? num(x.freeze_rate, 2) + ' %' : '–'),
      h('td', {}, x.loss_pct !== null && x.loss_pct !== undefined ? num(x.loss_pct, 2) + ' %' : '–'),
      h('td', {}, x.rtt_ms !== null && x.rtt_ms !== undefined ? num(x.rtt_ms, 0) + ' ms' : '–'), h('td', {}, num(x.mos, 2)), h('td', {}, x.reason || ''))));
  const alerts = (dev.active_alerts || []).map(a => h('div', {}, sev(a.severity), ' ', h('b', {}, a.code), ' ', a.message, ' ', h('span', { class: 'muted' }, ago(a.raised))));
  main.replaceChildren(
    h('h2', {}, h('a', { href: '#/devices' }, 'Devices'), ' › ', h('span', { id: 'dev-name' }, ident.name || id)),
    h('div', { class: 'grid2' },
      h('div', { class: 'panel' }, h('h3', {}, 'identity'), kv([
        ['id', id], ['name', ident.name || '–'], ['location', ident.location || '–'], ['group', dev.group],
        ['version', dev.version], ['slot', dev.slot], ['hardware', dev.hardware || ident.hardware || '–'], ['boot', dev.boot],
      ], 'identity')),
      h('div', { class: 'panel' }, h('h3', {}, 'health ', dev.online ? pill('online', 'on') : pill('offline', 'off'), ' ', h('span', { class: 'muted small' }, 'sample ' + ago(dev.health_ts))),
        kv(healthFigures(dev.health || {}), 'health'),
        h('h3', { style: 'margin-top:10px' }, 'active alerts'), alerts.length ? alerts : h('span', { class: 'muted' }, 'none'))),
    h('h2', {}, 'Actions'),
    h('div', { class: 'row', id: 'actions' },
      actBtn('Pull logs (1 h)', () => pullLogs(id, out)), actBtn('Run self-test', () => selfTest(id, out)),
      actBtn('Live view', () => liveView(id, out), 'primary')),
    out,
    h('h2', {}, 'Quality of service'), seg, charts,
    h('h2', {}, 'Recent viewer sessions'), h('div', { class: 'panel' }, sess.sessions && sess.sessions.length ? sessions : h('span', { class: 'muted', id: 'sessions' }, 'no sessions recorded')),
  );
  drawCharts(charts, id, range);
}
async function pullLogs(id, out) {
  out.replaceChildren(h('p', { class: 'muted' }, 'pulling logs…'));
  try {
    const r = await api(`/devices/${encodeURIComponent(id)}/logs`, { method: 'POST', body: { since: '1h' } });
    out.replaceChildren(h('h3', {}, `logs: ${r.lines} lines, ${r.bytes} bytes${r.truncated ? ' (cut at 1 MiB)' : ''}`),
      h('pre', { class: 'logs', id: 'logs-text' }, r.text));
  } catch (e) { out.replaceChildren(h('p', { class: 'err' }, 'log pull: ' + e.message)); }
}
async function selfTest(id, out) {
  out.replaceChildren(h('p', { class: 'muted' }, 'running the self-test…'));
  try {
    const r = await api(`/devices/${encodeURIComponent(id)}/commands/diag.selftest?timeout=60`, { method: 'POST', body: { fleet_ts: Date.now() / 1000 } });
    const res = r.result || {};
    out.replaceChildren(h('h3', {}, 'self-test ', pill(res.status || '?', res.status)),
      h('table', { id: 'selftest' }, h('tr', {}, h('th', {}, 'check'), h('th', {}, 'status'), h('th', {}, 'detail')),
        (res.checks || []).map(c => h('tr', {}, h('td', {}, c.name), h('td', {}, pill(c.status)), h('td', {}, c.detail)))),
      h('p', { class: 'muted small' }, res.summary || ''));
  } catch (e) { out.replaceChildren(h('p', { class: 'err' }, 'self-test: ' + e.message)); }
}
function stopLive() {
  const lv = state.live;
  if (!lv) return;
  state.live = null;
  clearInterval(lv.timer);
  lv.pc.close();
  if (lv.session) api(`/devices/${encodeURIComponent(lv.id)}/view/${lv.session}`, { method: 'DELETE' }).catch(() => {});
}
async function liveView(id, out) {
  stopLive();
  const video = h('video', { id: 'live', autoplay: true, playsinline: true, muted: true });
  const stats = h('div', { class: 'row small', id: 'live-stats' }, 'connecting…');
  out.replaceChildren(video, h('div', { class: 'row' }, actBtn('Stop', () => { stopLive(); stats.textContent = 'stopped'; }, 'danger')), stats);
  const pc = new RTCPeerConnection({ iceServers: [] });
  const lv = { id, pc, session: null, timer: null };
  state.live = lv;
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.ontrack = ev => { video.srcObject = ev.streams[0] || new MediaStream([ev.track]); };
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise(resolve => {  // no trickle: the device answers one complete offer
      if (pc.iceGatheringState === 'complete') return resolve();
      const t = setTimeout(resolve, 2000);
      pc.addEventListener('icegatheringstatechange', () => { if (pc.iceGatheringState === 'complete') { clearTimeout(t); resolve(); } });
    });
    const r = await api(`/devices/${encodeURIComponent(id)}/view`, { method: 'POST', body: { sdp: pc.localDescription.sdp } });
    lv.session = r.session;
    await pc.setRemoteDescription({ type: 'answer', sdp: r.sdp });
    const t0 = performance.now();
    lv.timer = setInterval(async () => {
      const rep = await pc.getStats();
      rep.forEach(st => {
        if (st.type === 'inbound-rtp' && st.kind === 'video') {
          stats.textContent = `session ${lv.session} · answer ${r.answer_ms} ms · ${st.framesDecoded || 0} frames · ${num(st.framesPerSecond || 0)} fps · ${st.packetsLost || 0} lost · ${num((performance.now() - t0) / 1000, 0)} s`;
          stats.setAttribute('data-frames', st.framesDecoded || 0);
        }
      });
    }, 1000);
  } catch (e) {
    stopLive();
    stats.textContent = 'live view: ' + e.message;
    stats.className = 'row err';
  }
}

// ---- alerts -------------------------------------------------------------------------------------
function localInput(ts) {
  const d = new Date(ts * 1000 - new Date().getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}
function alertCard(a, refresh) {
  const enc = encodeURIComponent(a.id);
  const ack = a.acknowledged, sil = a.silenced;
  const card = h('div', { class: 'alert' + (ack ? ' acked' : '') + (sil ? ' silenced' : ''), 'data-id': a.id },
    h('div', { class: 'head' }, h('span', {}, h('span', { class: 'code' }, a.code), ' ',
      a.device ? h('a', { href: '#/device/' + encodeURIComponent(a.device) }, a.device) : h('span', { class: 'muted' }, 'fleet')),
    h('span', { class: 'muted small', title: when(a.raised) }, ago(a.raised))),
    h('div', { class: 'small' }, a.message),
    ack ? h('div', { class: 'small ack' }, `acked by ${ack.by} after ${dur(ack.at - a.raised)}`, ack.note ? ` — “${ack.note}”` : '') : null,
    sil ? h('div', { class: 'small silence' }, `silenced until ${when(sil.until)} by ${sil.by}`, sil.note ? ` — “${sil.note}”` : '') : null);
  if (!a.active) return card;
  // the form is built when asked for: a board of 300 cards stays light
  const open = actBtn(ack ? 'Re-ack or silence…' : 'Acknowledge or silence…', () => open.replaceWith(alertForm(a, refresh)), 'act');
  card.append(open);
  return card;
}
function alertForm(a, refresh) {
  const enc = encodeURIComponent(a.id);
  const ack = a.acknowledged, sil = a.silenced;
  const form = h('form', { onsubmit: ev => ev.preventDefault() });
  const note = h('input', { type: 'text', name: 'note', placeholder: 'note' });
  const until = h('input', { type: 'datetime-local', name: 'until', value: localInput(Date.now() / 1000 + 3600) });
  const act = async (fn, what) => {
    try { await fn(); flash(what); refresh(); } catch (e) { flash(`${what}: ${e.message}`, true); }
  };
  form.append(...[note,
    actBtn(ack ? 'Re-ack' : 'Acknowledge', () => act(() => api(`/alerts/${enc}/ack`, { method: 'POST', body: { note: note.value } }), 'acknowledged ' + a.code), 'primary'),
    until,
    actBtn('Silence', () => act(() => api(`/alerts/${enc}/silence`, { method: 'POST', body: { until: new Date(until.value).getTime() / 1000, note: note.value } }), 'silenced ' + a.code)),
    sil ? actBtn('Lift silence', () => act(() => api(`/alerts/${enc}/silence`, { method: 'DELETE' }), 'silence lifted')) : null].filter(Boolean));
  setTimeout(() => note.focus(), 0);
  return form;
}
async function viewAlerts(main, q) {
  const tab = q.get('tab') || 'board';
  const tabs = h('div', { class: 'tabs seg' },
    h('button', { type: 'button', class: tab === 'board' ? 'on' : '', onclick: () => { location.hash = '#/alerts'; } }, 'Open alerts'),
    h('button', { type: 'button', class: tab === 'history' ? 'on' : '', id: 'tab-history', onclick: () => { location.hash = '#/alerts?tab=history'; } }, 'History'));
  const refresh = () => render();
  if (tab === 'history') {
    const page = await api('/alerts?active=all&limit=200');
    main.replaceChildren(h('h2', {}, 'Alerts'), tabs, h('div', { class: 'panel' }, h('table', { id: 'history' },
      h('tr', {}, ['sev', 'alert', 'device', 'raised', 'cleared', 'acknowledged', 'time to ack', 'note'].map(t => h('th', {}, t))),
      page.alerts.map(a => h('tr', { 'data-id': a.id }, h('td', {}, sev(a.severity)), h('td', {}, a.code), h('td', {}, a.device || 'fleet'),
        h('td', {}, when(a.raised)), h('td', {}, a.active ? pill('active', 'warn') : when(a.cleared)),
        h('td', {}, a.acknowledged ? a.acknowledged.by : '–'), h('td', { class: 'tta' }, a.acknowledged ? dur(a.acknowledged.at - a.raised) : '–'),
        h('td', {}, a.acknowledged ? a.acknowledged.note : ''))))),
    h('p', { class: 'muted' }, `${page.total} alerts, newest raise first (an alert raised again replaces its earlier raise)`));
    return;
  }
  const [ov, ...tiers] = await Promise.all([api('/overview?hours=1'), ...['P1', 'P2', 'P3'].map(p => api(`/alerts?severity=${p}&limit=100`))]);
  await state.whoReady;
  const order = a => (a.silenced ? 2 : a.acknowledged ? 1 : 0);
  const board = h('div', { class: 'board' }, ['P1', 'P2', 'P3'].map((p, i) => {
    const t = ov.time_to_ack[p], al = ov.alerts[p];
    const list = tiers[i].alerts.slice().sort((x, y) => order(x) - order(y) || y.raised - x.raised);
    return h('div', { class: 'tier ' + p, id: 'tier-' + p },
      h('div', { class: 'head' }, sev(p), ' ', h('b', { class: 'count' }, al.open), ' open · ', h('span', { class: 'attention' }, al.attention), ' need attention'),
      h('div', { class: 'muted small' }, `${al.acknowledged} acknowledged · ${al.silenced} silenced · time to ack ${t ? dur(t.median_s) + ' median (' + t.n + ')' : '–'}`),
      list.map(a => alertCard(a, refresh)),
      tiers[i].total > list.length ? h('p', { class: 'muted small' }, `${tiers[i].total - list.length} more not shown`) : null);
  }));
  main.replaceChildren(h('h2', {}, 'Alerts'), tabs, board);
}

// ---- rollouts -----------------------------------------------------------------------------------
async function viewRollouts(main) {
  const r = await api('/rollouts');
  main.replaceChildren(h('h2', {}, 'Rollouts'), h('div', { class: 'panel' }, r.rollouts.length ? h('table', { id: 'rollouts' },
    h('tr', {}, ['id', 'version', 'status', 'devices', 'succeeded', 'failed', 'in progress', 'waves', 'created'].map(t => h('th', {}, t))),
    r.rollouts.map(x => h('tr', { class: 'click', 'data-id': x.id, onclick: () => { location.hash = '#/rollout/' + x.id; } },
      h('td', {}, h('a', { href: '#/rollout/' + x.id }, x.id)), h('td', {}, x.version), h('td', {}, pill(x.status)), h('td', {}, x.devices),
      h('td', {}, x.counts.succeeded || 0), h('td', {}, (x.counts.failed || 0) + (x.counts.timed_out || 0)), h('td', {}, x.counts.in_progress || 0),
      h('td', {}, x.waves), h('td', {}, when(x.created)))))
    : h('p', { class: 'muted' }, 'no rollouts yet (fleetctl ota rollout)')));
}
const STATES = ['pending', 'in_progress', 'succeeded', 'failed', 'timed_out', 'skipped'];
async function viewRollout(main, id, q) {
  const filter = q.get('state') || '';
  const from = Number(q.get('from') || 0);
  const params = new URLSearchParams({ limit: 100, offset: from });
  if (filter) params.set('state', filter);
  // aggregates and one page of devices: a rollout over the whole fleet stays one small answer
  const [r] = await Promise.all([api(`/rollouts/${encodeURIComponent(id)}/devices?${params}`), state.whoReady]);
  const waveRows = r.wave_states.map(({ wave: w, counts: c }) => h('tr', { 'data-wave': w },
    h('td', {}, w === 0 && r.policy && r.policy.canary ? '0 (canary)' : w), h('td', {}, STATES.reduce((a, s_) => a + (c[s_] || 0), 0)),
    STATES.slice(1).map(s_ => h('td', { 'data-state': s_ }, c[s_] || ''))));
  const g = r.last_gate || {};
  const figs = ['devices', 'alerts_per_device', 'crashloop_share', 'freeze_rate', 'rendered_fps', 'ns_rtf'];
  const gate = g.window ? h('div', { id: 'gate' },
    h('p', {}, 'last verdict: ', g.passed ? pill('passed', 'pass') : pill('regressed', 'fail'), ' ', h('span', { class: 'muted' }, `window ${when(g.window[0])} – ${when(g.window[1])}`), g.note ? h('span', { class: 'muted' }, ' · ' + g.note) : null),
    (g.regressions || []).map(x => h('div', { class: 'err regression' }, x)),
    h('table', {}, h('tr', {}, h('th', {}, 'figure'), h('th', {}, 'updated'), h('th', {}, 'not yet updated')),
      figs.map(f => h('tr', {}, h('td', {}, f), h('td', {}, fig((g.updated || {})[f])), h('td', {}, fig((g.baseline || {})[f]))))))
    : h('p', { class: 'muted', id: 'gate' }, 'no wave gated yet');
  const slice = r.page;
  const go = (k, v) => { const n = new URLSearchParams(q); if (v === '' || v === null) n.delete(k); else n.set(k, v); if (k !== 'from') n.delete('from'); location.hash = `#/rollout/${id}?${n}`; };
  const reason = h('input', { type: 'text', placeholder: 'reason', id: 'halt-reason' });
  const actions = h('div', { class: 'row', id: 'rollout-actions' },
    r.status === 'running' ? [reason, actBtn('Halt', async () => {
      try { await api(`/rollouts/${id}/halt`, { method: 'POST', body: { reason: reason.value } }); flash('halted'); render(); } catch (e) { flash('halt: ' + e.message, true); }
    }, 'danger')] : null,
    r.status === 'halted' ? actBtn('Resume', async () => {
      try { await api(`/rollouts/${id}/resume`, { method: 'POST', body: {} }); flash('resumed'); render(); } catch (e) { flash('resume: ' + e.message, true); }
    }, 'primary') : null);
  main.replaceChildren(
    h('h2', {}, h('a', { href: '#/rollouts' }, 'Rollouts'), ' › ', id, ' ', pill(r.status), ' ', h('span', { class: 'muted' }, 'version ' + r.version)),
    r.reason ? h('p', { id: 'rollout-reason' }, r.reason) : null,
    h('div', { class: 'cards' }, STATES.map(s_ => h('div', { class: 'card' }, h('b', {}, s_.replace('_', ' ')), h('span', { class: 'big', id: 'rc-' + s_ }, r.counts[s_] || 0))),
      h('div', { class: 'card' }, h('b', {}, 'rolled back'), h('span', { class: 'big' }, r.rolled_back || 0))),
    actions,
    h('div', { class: 'grid2' },
      h('div', { class: 'panel' }, h('h3', {}, 'waves'), h('table', { id: 'waves' }, h('tr', {}, h('th', {}, 'wave'), h('th', {}, 'devices'), STATES.slice(1).map(s_ => h('th', {}, s_.replace('_', ' ')))), waveRows)),
      h('div', { class: 'panel' }, h('h3', {}, 'health gate'), gate)),
    h('h2', {}, 'Devices'),
    h('div', { class: 'row' }, h('select', { id: 'state-filter', onchange: ev => go('state', ev.target.value) }, h('option', { value: '' }, 'every state'), STATES.map(s_ => h('option', { value: s_, selected: s_ === filter }, s_))),
      h('span', { id: 'rollout-shown' }, `${r.total} devices`), from > 0 ? h('button', { type: 'button', onclick: () => go('from', Math.max(0, from - 100)) }, '‹ Previous') : null,
      from + 100 < r.total ? h('button', { type: 'button', onclick: () => go('from', from + 100) }, 'Next ›') : null),
    h('div', { class: 'panel' }, h('table', { id: 'rollout-devices' }, h('tr', {}, ['device', 'wave', 'state', 'phase', 'percent', 'reason', 'rollback'].map(t => h('th', {}, t))),
      slice.map(d => h('tr', { 'data-id': d.id }, h('td', {}, h('a', { href: '#/device/' + encodeURIComponent(d.id) }, d.id)), h('td', {}, d.wave < 0 ? '' : d.wave),
        h('td', {}, pill(d.state)), h('td', {}, d.phase), h('td', {}, d.percent === null ? '' : num(d.percent, 0) + ' %'), h('td', {}, d.reason), h('td', {}, d.rollback || ''))))));
}
function fig(v) { return v === null || v === undefined ? '–' : (Number.isInteger(v) ? v : Number(v).toFixed(3)); }

// ---- routing ------------------------------------------------------------------------------------
async function render() {
  const gen = ++state.gen;
  if (state.live && !location.hash.startsWith('#/device/' + encodeURIComponent(state.live.id))) stopLive();
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, query] = raw.split('?');
  const q = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  const section = parts[0] === 'device' ? 'devices' : parts[0] === 'rollout' ? 'rollouts' : (parts[0] || 'overview');
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('on', a.dataset.nav === section);
  const main = h('main', { id: 'main', 'data-view': parts[0] || 'overview' });
  try {
    if (!parts.length) await viewOverview(main);
    else if (parts[0] === 'alerts') await viewAlerts(main, q);
    else if (parts[0] === 'devices') await viewDevices(main, q);
    else if (parts[0] === 'device') await viewDevice(main, parts.slice(1).join('/'), q);
    else if (parts[0] === 'rollouts') await viewRollouts(main);
    else if (parts[0] === 'rollout') await viewRollout(main, parts[1], q);
    else main.replaceChildren(h('p', {}, 'no such page'));
  } catch (e) {
    main.setAttribute('data-error', e.code || 'error');
    main.replaceChildren(h('p', { class: 'err', id: 'view-error' }, e.status === 401 ? 'A token is needed to see this.' : 'Could not load: ' + e.message));
  }
  if (gen !== state.gen) return;
  main.setAttribute('data-ready', '1');
  $('#main').replaceWith(main);
  performance.mark('console-view-ready'); // benchmarks/console_paint.py reads it
}

document.addEventListener('DOMContentLoaded', () => {
  $('#login-form').addEventListener('submit', () => {
    sessionStorage.setItem(TOKEN_KEY, $('#token').value.trim());
    $('#token').value = '';
    state.whoReady = loadWho();
    render();
  });
  $('#signout').addEventListener('click', () => { sessionStorage.removeItem(TOKEN_KEY); stopLive(); state.whoReady = loadWho(); render(); });
  window.addEventListener('hashchange', render);
  state.whoReady = loadWho(); // in parallel with the first view's own requests; views with buttons wait for it
  render();
  // the overview, the alert board and the rollouts follow the store by themselves; never while the
  // operator types a note, and never the device page (a live view or a log must not be cut)
  const every = Number(sessionStorage.getItem(REFRESH_KEY)) || 30000;
  setInterval(() => {
    const view = ($('#main') || {}).dataset || {};
    const busy = document.activeElement && document.activeElement.matches('input, select, textarea');
    if (document.visibilityState === 'visible' && !busy && !$('#login').open && view.ready
        && ['overview', 'alerts', 'rollouts', 'rollout'].includes(view.view)) render();
  }, every);
});
