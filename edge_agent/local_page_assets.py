"""The technicians' local page as served by edge_agent/local_page.py: one HTML file, one
stylesheet, one script. Nothing is fetched from anywhere else (no CDN, no web fonts): the
turbine has no internet. The script draws the plots itself, as SVG elements, and builds
every piece of text with ``textContent`` (no HTML from data). No inline script or style,
so the page works under ``Content-Security-Policy: default-src 'self'``.

The server looks a request's path up in :data:`ASSETS`; no path from a request is ever used
to open a file.
"""
from __future__ import annotations

INDEX_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edge-agent: local page</title>
<link rel="stylesheet" href="/app.css">
<script src="/app.js" defer></script>
</head>
<body>
<header>
  <h1>edge-agent <span id="device">&hellip;</span></h1>
  <span id="state" class="badge">loading</span>
  <span id="asof" class="muted"></span>
</header>
<noscript><p class="problem">This page needs JavaScript. The same data is at /api/status,
/api/alerts, /api/trends and /api/spectrum.</p></noscript>
<p id="problem" class="problem" hidden></p>
<main>
  <section id="health-sec"><h2>Health</h2><dl id="health"></dl></section>
  <section id="model-sec"><h2>Model</h2><dl id="model"></dl></section>
  <section id="dq-sec"><h2>Data quality</h2><div id="dq"></div></section>
  <section id="alerts-sec" class="wide">
    <h2>Open alerts</h2>
    <form id="ackform" class="ackform" autocomplete="off">
      <label>Your name <input id="ack-by" maxlength="100" placeholder="name"></label>
      <label>Local token <input id="ack-token" type="password" maxlength="200" placeholder="token"></label>
      <span id="ack-result" class="muted"></span>
    </form>
    <div id="alerts"><p class="muted">loading&hellip;</p></div>
  </section>
  <section id="spectrum-sec" class="wide">
    <h2>Envelope spectrum of the last alert window</h2>
    <p id="spectrum-caption" class="muted">loading&hellip;</p>
    <div id="spectrum-plot" class="plot"></div>
  </section>
  <section id="trends-sec" class="wide">
    <h2>Trends <span id="trends-caption" class="muted"></span></h2>
    <div id="trends"></div>
  </section>
</main>
<footer class="muted">Served by the agent on this gateway; refreshes every 5 s. Acknowledgements go to
the local alert log and reach the fleet when the link is up.</footer>
</body>
</html>
"""

APP_CSS = """
:root { --fg: #1b1f24; --muted: #5b6470; --line: #d0d5dc; --bg: #f6f7f9; --card: #fff;
        --ok: #1a7f37; --warn: #9a6700; --alarm: #cf222e; --info: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); background: var(--bg); }
header { display: flex; align-items: center; gap: 14px; flex-wrap: wrap; padding: 10px 18px;
         background: #24292f; color: #fff; }
header h1 { font-size: 20px; margin: 0; font-weight: 600; }
header .muted { color: #c9d1d9; }
main { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 0.8fr) minmax(0, 1.4fr); gap: 14px;
       padding: 14px 18px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
section.wide { grid-column: 1 / -1; }
h2 { font-size: 16px; margin: 0 0 8px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 3px 12px; margin: 0; }
dt { color: var(--muted); }
dd { margin: 0; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.muted { color: var(--muted); font-size: 13px; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 10px; font-size: 13px; font-weight: 600;
         background: #6e7781; color: #fff; }
.badge.ok, .badge.running { background: var(--ok); }
.badge.warning, .badge.stale { background: var(--warn); }
.badge.alarm, .badge.down, .badge.stopped { background: var(--alarm); }
.badge.info { background: var(--info); }
.problem { margin: 10px 18px 0; padding: 8px 12px; background: #ffebe9; border: 1px solid var(--alarm);
           border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 2px 6px 2px 0; border-bottom: 1px solid var(--line); overflow-wrap: anywhere; }
.alert { border: 1px solid var(--line); border-left: 6px solid var(--warn); border-radius: 6px;
         padding: 8px 12px; margin: 8px 0; }
.alert.alarm { border-left-color: var(--alarm); }
.alert.info { border-left-color: var(--info); }
.alert .head { display: flex; gap: 10px; flex-wrap: wrap; align-items: center; }
.alert .explanation { margin: 6px 0; }
.alert .acked { color: var(--ok); font-weight: 600; }
.alert .actions { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }
.ackform { display: flex; gap: 14px; flex-wrap: wrap; align-items: center; margin-bottom: 6px; }
input, select, button { font: inherit; padding: 4px 8px; border: 1px solid var(--line); border-radius: 5px; }
button { background: #f3f4f6; cursor: pointer; min-height: 34px; }
button.primary { background: var(--ok); color: #fff; border-color: var(--ok); }
button:disabled { opacity: .5; cursor: default; }
.plot svg { width: 100%; height: auto; display: block; }
.trend-row { display: grid; grid-template-columns: 160px repeat(3, minmax(0, 1fr)); gap: 10px;
             align-items: center; margin: 4px 0; }
.trend-row .ch { font-weight: 600; overflow-wrap: anywhere; }
svg text { font: 11px system-ui, sans-serif; fill: #444c56; }
footer { padding: 4px 18px 18px; }
@media (max-width: 900px) { main { grid-template-columns: 1fr; } .trend-row { grid-template-columns: 1fr; } }
"""

APP_JS = r"""
'use strict';
(function () {
  const REFRESH_MS = 5000;
  const SVGNS = 'http://www.w3.org/2000/svg';
  const COLORS = { bpfo: '#0969da', bpfi: '#cf222e', bsf: '#8250df', ftf: '#1a7f37' };
  const $ = (id) => document.getElementById(id);
  let spectrumAlert = null;   // null: the latest alert's spectrum
  let alertsSeen = '';

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function num(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return '–';
    if (typeof v !== 'number') return String(v);
    const d = digits === undefined ? 3 : digits;
    if (v !== 0 && (Math.abs(v) >= 1e5 || Math.abs(v) < 1e-3)) return v.toExponential(2);
    return String(Number(v.toPrecision(d + 1)));
  }
  function when(t) { return t ? new Date(t * 1000).toLocaleString() : '–'; }
  function duration(s) {
    s = Math.max(0, Math.round(s || 0));
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    return (d ? d + ' d ' : '') + (d || h ? h + ' h ' : '') + m + ' min ' + (s % 60) + ' s';
  }
  function fill(dl, rows) {
    dl.replaceChildren();
    for (const [k, v, cls] of rows) {
      dl.append(el('dt', {}, k));
      const dd = el('dd', {}, v);
      if (cls) { dd.textContent = ''; dd.append(el('span', { class: 'badge ' + cls }, v)); }
      dl.append(dd);
    }
  }
  function sum(obj) { return Object.values(obj || {}).reduce((a, b) => a + (typeof b === 'number' ? b : 0), 0); }
  async function getJSON(url) {
    const r = await fetch(url, { cache: 'no-store' });
    if (r.status === 404) return null;
    if (!r.ok) throw new Error(url + ': HTTP ' + r.status);
    return r.json();
  }
  function problem(text) { const p = $('problem'); p.hidden = !text; p.textContent = text || ''; }

  // -- health, model, data quality ------------------------------------------------------------
  function renderStatus(s) {
    const h = s.health, m = s.model, up = h.uplink || {};
    $('device').textContent = h.device || '';
    const st = $('state');
    st.textContent = h.state + (h.stale ? ' (stale)' : '');
    st.className = 'badge ' + (h.stale ? 'stale' : h.state);
    $('asof').textContent = 'as of ' + when(h.as_of);
    fill($('health'), [
      ['state', h.state, h.stale ? 'stale' : h.state],
      ['uptime', duration(h.uptime_s)],
      ['uplink', !up.enabled ? 'off (local log only)' : up.connected ? 'connected' : 'down',
        !up.enabled ? '' : up.connected ? 'ok' : 'down'],
      ['broker', up.address || '–'],
      ['last uplink error', up.last_error || '–'],
      ['samples queue', h.queues.samples.depth + ' / ' + h.queues.samples.max + ', dropped ' + h.queues.samples.dropped],
      ['outbox', h.queues.outbox.depth + ' waiting, ' + num(h.queues.outbox.bytes / 1024, 1) + ' KiB'],
      ['windows', h.windows + ' (' + h.windows_scored + ' scored)'],
      ['alerts', h.open_alerts + ' open, ' + h.alerts_raised + ' raised since start'],
      ['errors', 'processing ' + h.errors.processing + ', bad blocks ' + h.errors.bad_blocks +
        ', sources ' + h.errors.sources],
    ]);
    fill($('model'), [
      ['version', m.version],
      ['backend', m.backend],
      ['update', m.update + (m.update_reason ? ' (' + m.update_reason + ')' : '')],
      ['agent', h.agent_version],
    ]);
    const dq = s.data_quality || {}, box = $('dq');
    box.replaceChildren();
    const chans = Object.keys(dq.windows_checked || {}).sort();
    box.append(el('p', { class: 'muted' }, 'action on bad windows: ' + (dq.action || '–') + '; ' +
      (dq.open_alerts || 0) + ' data-quality alert(s) open'));
    if (!chans.length) { box.append(el('p', { class: 'muted' }, 'no windows yet')); return; }
    const t = el('table');
    const hr = el('tr');
    for (const c of ['channel', 'checked', 'flagged', 'unscored', 'gaps', 'flags']) hr.append(el('th', {}, c));
    t.append(hr);
    for (const ch of chans) {
      const tr = el('tr');
      const flags = Object.entries((dq.flags || {})[ch] || {}).map(([k, v]) => k + ' ' + v).join(', ');
      for (const v of [ch, dq.windows_checked[ch], (dq.windows_flagged || {})[ch] || 0,
        (dq.windows_unscored || {})[ch] || 0, (dq.gaps || {})[ch] || 0, flags || '–']) tr.append(el('td', {}, v));
      t.append(tr);
    }
    box.append(t);
  }

  // -- alerts and acknowledgements --------------------------------------------------------------
  function renderAlerts(a) {
    const key = JSON.stringify([a.open.map((r) => [r.id, r.ack_by, r.verdict, r.spectrum]), a.ack_enabled]);
    if (key === alertsSeen) return;
    alertsSeen = key;
    const box = $('alerts');
    box.replaceChildren();
    $('ackform').hidden = !a.ack_enabled;
    if (!a.ack_enabled) box.append(el('p', { class: 'muted' }, 'Acknowledging here is off ([page] token_file not set); ' +
      'use `edge-agent alerts ack` on the gateway.'));
    if (!a.open.length) { box.append(el('p', { class: 'muted', id: 'no-alerts' }, 'No open alerts.')); return; }
    for (const r of a.open) {
      const card = el('div', { class: 'alert ' + (r.severity || ''), 'data-alert-id': r.id });
      const head = el('div', { class: 'head' });
      head.append(el('span', { class: 'badge ' + (r.severity || '') }, r.severity || '–'),
        el('strong', {}, r.type), el('span', {}, r.channel || ''),
        el('span', { class: 'muted' }, 'opened ' + when(r.opened_at) + ' · id ' + r.id.slice(0, 12)));
      card.append(head, el('p', { class: 'explanation' }, r.explanation || ''));
      const actions = el('div', { class: 'actions' });
      if (r.ack_by) actions.append(el('span', { class: 'acked' }, 'acknowledged by ' + r.ack_by + ' (' +
        (r.verdict || 'no verdict') + (r.ack_origin === 'fleet' ? ', from the fleet' : '') + ')' +
        (r.ack_published ? '' : ', waiting for the uplink')));
      if (a.ack_enabled) {
        const sel = el('select', { 'aria-label': 'verdict' });
        for (const [v, t] of [['confirmed', 'confirmed'], ['false_alarm', 'false alarm'], ['', 'no verdict']])
          sel.append(el('option', { value: v }, t));
        const btn = el('button', { type: 'button', class: 'primary ack-button' }, r.ack_by ? 'Acknowledge again' : 'Acknowledge');
        btn.addEventListener('click', () => ack(r.id, sel.value, btn));
        actions.append(sel, btn);
      }
      if (r.spectrum) {
        const sb = el('button', { type: 'button' }, 'Show its spectrum');
        sb.addEventListener('click', () => { spectrumAlert = r.id; refreshSpectrum(); $('spectrum-sec').scrollIntoView(); });
        actions.append(sb);
      }
      card.append(actions);
      box.append(card);
    }
  }

  async function ack(id, verdict, btn) {
    const by = $('ack-by').value.trim(), token = $('ack-token').value, out = $('ack-result');
    if (!by) { out.textContent = 'Give your name first.'; $('ack-by').focus(); return; }
    if (!token) { out.textContent = 'Give the local token first.'; $('ack-token').focus(); return; }
    btn.disabled = true;
    try {
      const r = await fetch('/api/ack', { method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ alert_id: id, by: by, verdict: verdict || null, token: token }) });
      const body = await r.json().catch(() => ({}));
      out.textContent = r.ok ? 'Acknowledged ' + id.slice(0, 12) + '; ' + body.note
        : 'Refused (' + r.status + '): ' + (body.error || r.statusText);
      if (r.ok) { alertsSeen = ''; refreshAlerts(); }
    } catch (e) {
      out.textContent = 'Failed: ' + e.message;
    } finally { btn.disabled = false; }
  }

  // -- plots -----------------------------------------------------------------------------------
  function niceStep(span, count) {
    const raw = span / Math.max(1, count), p = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / p;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
  }

  function renderSpectrum(s) {
    const box = $('spectrum-plot'), cap = $('spectrum-caption');
    box.replaceChildren();
    if (!s) { cap.textContent = 'No alert window yet: the spectrum appears when an alert is raised.'; return; }
    cap.textContent = s.type + ' alert ' + s.alert_id.slice(0, 12) + ' on ' + s.channel + ', window of ' +
      when(s.time) + ': ' + num(s.rpm, 4) + ' rpm (shaft ' + num(s.shaft_hz, 3) + ' Hz), envelope band ' +
      num(s.band_hz[0], 4) + '–' + num(s.band_hz[1], 4) + ' Hz, ' + s.fs + ' Hz sampling. Markers: defect orders ' +
      'of the bearing at this shaft speed (1×, 2×, 3×).';
    const W = 1000, H = 340, L = 62, R = 16, T = 28, B = 40;
    const xs = s.hz, ys = s.amplitude, xmax = s.hz_max, ymax = Math.max(...ys, 1e-12) * 1.12;
    const X = (f) => L + (W - L - R) * f / xmax, Y = (a) => T + (H - T - B) * (1 - a / ymax);
    const g = svg('svg', { id: 'spectrum', viewBox: '0 0 ' + W + ' ' + H, role: 'img',
      'aria-label': 'envelope spectrum with defect-order markers' });
    g.append(svg('rect', { x: L, y: T, width: W - L - R, height: H - T - B, fill: '#fff', stroke: '#d0d5dc' }));
    const xstep = niceStep(xmax, 10);
    for (let f = 0; f <= xmax + 1e-9; f += xstep) {
      g.append(svg('line', { x1: X(f), x2: X(f), y1: T, y2: H - B, stroke: '#eef0f3' }));
      g.append(svg('text', { x: X(f), y: H - B + 15, 'text-anchor': 'middle' }, num(f, 3)));
    }
    const ystep = niceStep(ymax, 5);
    for (let a = 0; a <= ymax + 1e-15; a += ystep) {
      g.append(svg('line', { x1: L, x2: W - R, y1: Y(a), y2: Y(a), stroke: '#eef0f3' }));
      g.append(svg('text', { x: L - 6, y: Y(a) + 4, 'text-anchor': 'end' }, num(a, 2)));
    }
    g.append(svg('text', { x: (L + W - R) / 2, y: H - 6, 'text-anchor': 'middle' }, 'frequency, Hz'));
    g.append(svg('text', { x: 14, y: T + (H - T - B) / 2, 'text-anchor': 'middle',
      transform: 'rotate(-90 14 ' + (T + (H - T - B) / 2) + ')' }, 'envelope amplitude, g'));
    let d = '';
    for (let i = 0; i < xs.length; i++) d += (i ? 'L' : 'M') + X(xs[i]).toFixed(1) + ' ' + Y(ys[i]).toFixed(1);
    g.append(svg('path', { d: d, fill: 'none', stroke: '#24292f', 'stroke-width': 1.2, class: 'spectrum-line' }));
    const rowsEnd = [];  // label rows: where each row's last label ends, so labels never overlap
    const markers = s.markers.filter((m) => m.hz <= xmax).sort((a, b) => a.hz - b.hz);
    for (const m of markers) {
      const c = COLORS[m.family] || '#555', x = X(m.hz);
      const mk = svg('g', { class: 'marker marker-' + m.family, 'data-name': m.name, 'data-hz': m.hz.toFixed(2) });
      mk.append(svg('line', { x1: x, x2: x, y1: T, y2: H - B, stroke: c, 'stroke-width': m.harmonic === 1 ? 1.6 : 1,
        'stroke-dasharray': m.harmonic === 1 ? '6 3' : '2 3', opacity: m.harmonic === 1 ? 0.95 : 0.6 }));
      mk.append(svg('title', {}, m.name + ' = ' + num(m.order, 4) + ' × shaft = ' + num(m.hz, 4) + ' Hz; amplitude ' + num(m.amplitude, 3) + ' g'));
      let row = rowsEnd.findIndex((end) => x + 3 > end + 4);
      if (row < 0) { row = rowsEnd.length; rowsEnd.push(0); }
      rowsEnd[row] = x + 3 + 6.5 * m.name.length;
      mk.append(svg('text', { x: x + 3, y: T + 12 + 12 * row, fill: c, class: 'marker-label' }, m.name));
      g.append(mk);
    }
    box.append(g);
  }

  function sparkline(values, label, unit) {
    const W = 320, H = 90, P = 6;
    const vals = values.filter((v) => v !== null && Number.isFinite(v));
    const g = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, class: 'trend', role: 'img', 'aria-label': label });
    g.append(svg('rect', { x: 0, y: 0, width: W, height: H, fill: '#fff', stroke: '#d0d5dc' }));
    const last = vals.length ? vals[vals.length - 1] : null;
    g.append(svg('text', { x: P, y: 14 }, label + (unit ? ', ' + unit : '') + ': ' + num(last, 3)));
    if (vals.length < 2) { g.append(svg('text', { x: P, y: 50 }, 'not enough windows yet')); return g; }
    let lo = Math.min(...vals), hi = Math.max(...vals);
    if (hi - lo < 1e-12) { lo -= 1; hi += 1; }
    const n = values.length, X = (i) => P + (W - 2 * P) * i / (n - 1), Y = (v) => 20 + (H - 34) * (1 - (v - lo) / (hi - lo));
    let d = '', pen = false;
    values.forEach((v, i) => {
      if (v === null || !Number.isFinite(v)) { pen = false; return; }
      d += (pen ? 'L' : 'M') + X(i).toFixed(1) + ' ' + Y(v).toFixed(1); pen = true;
    });
    g.append(svg('path', { d: d, fill: 'none', stroke: '#0969da', 'stroke-width': 1.3 }));
    g.append(svg('text', { x: W - P, y: 14, 'text-anchor': 'end' }, 'max ' + num(hi, 3)));
    g.append(svg('text', { x: W - P, y: H - 4, 'text-anchor': 'end' }, 'min ' + num(lo, 3)));
    return g;
  }

  function renderTrends(t) {
    const box = $('trends');
    box.replaceChildren();
    const chans = Object.keys(t.channels).sort();
    $('trends-caption').textContent = '(last ' + t.max_windows + ' scored windows per channel)';
    if (!chans.length) { box.append(el('p', { class: 'muted' }, 'no scored windows yet')); return; }
    for (const ch of chans) {
      const c = t.channels[ch], row = el('div', { class: 'trend-row', 'data-channel': ch });
      row.append(el('div', { class: 'ch' }, ch + ' (' + c.rms.length + ' windows, last ' + (c.label[c.label.length - 1] || '–') + ')'));
      row.append(sparkline(c.rms, 'RMS', 'g'), sparkline(c.kurtosis, 'kurtosis', ''), sparkline(c.anomaly_score, 'anomaly score', ''));
      box.append(row);
    }
  }

  // -- refresh ---------------------------------------------------------------------------------
  async function refreshAlerts() { renderAlerts(await getJSON('/api/alerts')); }
  async function refreshSpectrum() {
    renderSpectrum(await getJSON('/api/spectrum' + (spectrumAlert ? '?alert=' + encodeURIComponent(spectrumAlert) : '')));
  }
  async function refresh() {
    try {
      const [s, a, t] = await Promise.all([getJSON('/api/status'), getJSON('/api/alerts'), getJSON('/api/trends')]);
      if (s && s.health) renderStatus(s); else if (s) $('state').textContent = 'starting';
      if (a) renderAlerts(a);
      if (t) renderTrends(t);
      await refreshSpectrum();
      problem('');
    } catch (e) {
      problem('Cannot reach the agent: ' + e.message);
      $('state').textContent = 'unreachable'; $('state').className = 'badge down';
    }
  }
  $('ackform').addEventListener('submit', (e) => e.preventDefault());
  refresh();
  setInterval(refresh, REFRESH_MS);
})();
"""

# path -> (content type, body); the only things the page server sends besides its JSON.
ASSETS: dict[str, tuple[str, bytes]] = {
    "/": ("text/html; charset=utf-8", INDEX_HTML.encode()),
    "/index.html": ("text/html; charset=utf-8", INDEX_HTML.encode()),
    "/app.css": ("text/css; charset=utf-8", APP_CSS.encode()),
    "/app.js": ("text/javascript; charset=utf-8", APP_JS.encode()),
}
