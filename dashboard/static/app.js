// sandstorm's dashboard: the runs list, a run's events live, its files,
// cancel, and the host's state. Plain DOM, no libraries, nothing fetched
// but this server's API.
'use strict';

const $ = (sel) => document.querySelector(sel);
const KEY = 'sandstorm-api-key';
const POLL_MS = 2000;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

// ---- the API ---------------------------------------------------------------

class Unauthorized extends Error {}

async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers);
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = 'Bearer ' + key;
  const resp = await fetch(path, Object.assign({}, opts, { headers }));
  if (resp.status === 401) {
    showLogin();
    throw new Unauthorized('this server needs an API key');
  }
  return resp;
}

async function json(path, opts) {
  const resp = await api(path, opts);
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.message || body.error || resp.statusText);
  return body;
}

// follow reads path's Server-Sent Events, calling onEvent(id, data) for
// each, and resumes after a dropped connection from the last id it saw.
// It ends when the server ends the stream (the run is over) or when the
// returned stop is called.
function follow(path, onEvent, onEnd) {
  let last = null;
  let stopped = false;
  const ctrl = { abort: null };
  (async () => {
    while (!stopped) {
      try {
        const headers = last === null ? {} : { 'Last-Event-ID': String(last) };
        const abort = new AbortController();
        ctrl.abort = () => abort.abort();
        const resp = await api(path, { headers, signal: abort.signal });
        if (!resp.ok) throw new Error('events: ' + resp.status);
        // 204: the run is over and nothing is newer than what we have.
        if (resp.status === 204) { stopped = true; onEnd(); return; }
        const reader = resp.body.getReader();
        const dec = new TextDecoder();
        let buf = '';
        let id = null;
        let data = [];
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let nl;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl).replace(/\r$/, '');
            buf = buf.slice(nl + 1);
            if (line === '') {
              if (data.length) {
                if (id !== null) last = Number(id);
                onEvent(last, data.join('\n'));
              }
              id = null;
              data = [];
            } else if (line.startsWith('id:')) id = line.slice(3).trim();
            else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
          }
        }
        // The server ends the stream when the run has ended.
        stopped = true;
        onEnd();
        return;
      } catch (err) {
        if (stopped || err instanceof Unauthorized) return;
        await new Promise((r) => setTimeout(r, 1000)); // dropped: resume
      }
    }
  })();
  return () => {
    stopped = true;
    if (ctrl.abort) ctrl.abort();
  };
}

// ---- formatting ------------------------------------------------------------

function age(iso) {
  if (!iso) return '–';
  const s = (Date.now() - Date.parse(iso)) / 1000;
  if (s < 60) return Math.max(0, Math.round(s)) + 's';
  if (s < 3600) return Math.round(s / 60) + 'm';
  if (s < 86400) return Math.round(s / 3600) + 'h';
  return Math.round(s / 86400) + 'd';
}

function duration(r) {
  if (!r.started_at) return '–';
  const end = r.finished_at ? Date.parse(r.finished_at) : Date.now();
  return ((end - Date.parse(r.started_at)) / 1000).toFixed(1) + 's';
}

const cost = (usd) => '$' + (usd || 0).toFixed(4);
const shorten = (s, n) => (s.length > n ? s.slice(0, n - 1) + '…' : s);

function bytes(n) {
  if (n < 1024) return n + ' B';
  if (n < 1 << 20) return (n / 1024).toFixed(1) + ' KiB';
  return (n / (1 << 20)).toFixed(1) + ' MiB';
}

const KEY_ARGS = {
  Bash: 'command', Read: 'file_path', Write: 'file_path', Edit: 'file_path', MultiEdit: 'file_path',
  NotebookEdit: 'notebook_path', Glob: 'pattern', Grep: 'pattern', WebFetch: 'url', WebSearch: 'query',
  Task: 'description', Agent: 'description',
};

function keyArg(tool, input) {
  input = input || {};
  const k = KEY_ARGS[tool];
  if (k && typeof input[k] === 'string') return shorten(input[k], 120);
  for (const name of Object.keys(input).sort()) {
    if (typeof input[name] === 'string') return shorten(name + '=' + input[name], 120);
  }
  return '';
}

function toolText(content) {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) return content.map((b) => (b && b.text) || '').join('\n');
  return '';
}

// lines renders one event as the CLI does: [class, text] pairs.
function lines(ev) {
  const out = [];
  switch (ev.type) {
    case 'system':
      if (ev.subtype === 'init') out.push(['meta', `● agent started (model ${ev.model || '–'})`]);
      break;
    case 'assistant':
      for (const b of (ev.message && ev.message.content) || []) {
        if (b.type === 'text' && b.text.trim()) out.push(['text', b.text.trim()]);
        if (b.type === 'tool_use') out.push(['tool', `→ ${b.name} ${keyArg(b.name, b.input)}`]);
      }
      break;
    case 'user':
      for (const b of (ev.message && ev.message.content) || []) {
        if (b.type === 'tool_result') {
          const text = shorten(toolText(b.content).replace(/\s+/g, ' ').trim(), 200);
          out.push([b.is_error ? 'err' : 'result', `  ${b.is_error ? '← error:' : '←'} ${text}`]);
        }
      }
      break;
    case 'result':
      out.push([ev.is_error || ev.subtype !== 'success' ? 'err' : 'meta',
        `── ${ev.subtype} · ${ev.num_turns} turns · ${((ev.duration_ms || 0) / 1000).toFixed(1)}s · ${cost(ev.total_cost_usd)}`]);
      break;
    case 'sandbox': {
      const warm = ev.event === 'created' && ev.warm !== undefined ? (ev.warm ? ' (warm)' : ' (cold' + (ev.warm_miss ? ': ' + ev.warm_miss : '') + ')') : '';
      out.push(['meta', `· sandbox ${ev.sandbox_id} ${ev.event} on ${ev.runtime} (${ev.duration_ms}ms)${warm}`]);
      break;
    }
    case 'stderr':
    case 'stdout':
      out.push(['meta', `· ${ev.type}: ${ev.line}`]);
      break;
    case 'egress':
      out.push([ev.decision === 'deny' ? 'err' : 'meta', `${ev.decision === 'deny' ? '⊘ egress denied' : '· egress'}: ${ev.host}:${ev.port} (${ev.rule})`]);
      break;
    case 'file':
      out.push(['meta', `↓ ${ev.path} (${bytes(ev.size)})`]);
      break;
    case 'files_skipped':
      for (const s of ev.skipped || []) out.push(['err', `! not handed back: ${s.path} (${s.reason})`]);
      break;
    case 'model_usage':
      out.push(['meta', `· model: ${ev.requests} requests, ${ev.input_tokens} in, ${ev.output_tokens} out, ${cost(ev.cost_usd)}`]);
      break;
    case 'error':
      out.push(['err', `✗ error (${ev.code}): ${ev.message}`]);
      break;
    case 'run':
      out.push(['meta', `· run ${ev.run_id}`]);
      break;
  }
  return out;
}

// ---- pages -----------------------------------------------------------------

let timer = null;
let stopFollow = null;

function show(id) {
  for (const s of ['login', 'list', 'run']) $('#' + s).hidden = s !== id;
}

function showLogin() {
  show('login');
  $('#key').focus();
}

$('#login-form').addEventListener('submit', (e) => {
  e.preventDefault();
  sessionStorage.setItem(KEY, $('#key').value.trim());
  $('#key').value = '';
  route();
});

async function hostState() {
  try {
    const h = await json('/health');
    let s = `${h.sandbox_backend} ${h.runtime_version || ''} · ${h.running}/${h.max_concurrent_agents} slots · ${h.queued} queued`;
    if (h.pool) s += ` · pool ${h.pool.ready}/${h.pool.size} ready${h.pool.refilling ? `, ${h.pool.refilling} starting` : ''}`;
    if (h.status !== 'ok') s += ` · ${h.status}: ${h.error || ''}`;
    $('#host').textContent = s;
  } catch (err) {
    if (!(err instanceof Unauthorized)) $('#host').textContent = 'server unreachable: ' + err.message;
  }
}

function chart(runs) {
  const svg = $('#chart');
  const W = 600, H = 90, N = 60;
  const now = Date.now();
  const count = new Array(N).fill(0), spend = new Array(N).fill(0);
  for (const r of runs) {
    const m = Math.floor((now - Date.parse(r.created_at)) / 60000);
    if (m >= 0 && m < N) {
      count[N - 1 - m]++;
      spend[N - 1 - m] += r.total_cost_usd || 0;
    }
  }
  const maxC = Math.max(1, ...count), maxS = Math.max(1e-9, ...spend);
  const w = W / N;
  svg.replaceChildren();
  const ns = 'http://www.w3.org/2000/svg';
  count.forEach((c, i) => {
    if (!c) return;
    const r = document.createElementNS(ns, 'rect');
    const h = (c / maxC) * (H - 10);
    r.setAttribute('x', i * w + 1);
    r.setAttribute('y', H - h);
    r.setAttribute('width', w - 2);
    r.setAttribute('height', h);
    const t = document.createElementNS(ns, 'title');
    t.textContent = `${c} runs, ${cost(spend[i])}`;
    r.append(t);
    svg.append(r);
  });
  let acc = 0;
  const total = spend.reduce((a, b) => a + b, 0) || 1;
  const pts = spend.map((s, i) => {
    acc += s;
    return `${i * w + w / 2},${H - (acc / total) * (H - 10)}`;
  });
  if (maxS > 1e-9) {
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute('points', pts.join(' '));
    svg.append(line);
  }
  $('#chart-caption').textContent = `Runs per minute (bars) and cumulative cost (line), last hour: ${runs.filter((r) => now - Date.parse(r.created_at) < 3600000).length} runs, ${cost(spend.reduce((a, b) => a + b, 0))}`;
}

async function refreshList() {
  hostState();
  try {
    const page = await json('/runs?limit=100');
    const rows = page.runs.map((r) => {
      return el('tr', { 'data-id': r.id, 'data-status': r.status },
        el('td', {}, el('a', { href: '#/runs/' + r.id }, r.id)),
        el('td', { class: 'status-' + r.status }, r.status),
        el('td', {}, age(r.created_at)),
        el('td', {}, duration(r)),
        el('td', {}, cost(r.total_cost_usd)),
        el('td', {}, r.backend || '–'),
        el('td', {}, sandboxKind(r)),
        el('td', { class: 'prompt', title: r.prompt }, r.prompt));
    });
    $('#runs tbody').replaceChildren(...rows);
    chart(page.runs);
  } catch (err) {
    if (!(err instanceof Unauthorized)) $('#runs tbody').replaceChildren(el('tr', {}, el('td', { colSpan: 8, class: 'error' }, err.message)));
  }
}

// sandboxKind says whether a run's sandbox came from the warm pool.
function sandboxKind(r) {
  if (r.warm) return 'warm';
  return r.sandbox_id ? 'cold' : '–';
}

$('#start-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const button = $('#start');
  button.disabled = true;
  $('#start-error').textContent = '';
  try {
    const r = await json('/runs', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ prompt: $('#prompt').value }),
    });
    $('#prompt').value = '';
    location.hash = '#/runs/' + r.id;
  } catch (err) {
    $('#start-error').textContent = err.message;
  } finally {
    button.disabled = false;
  }
});

async function summary(id) {
  const r = await json('/runs/' + id);
  const s = $('#run-summary');
  s.dataset.status = r.status;
  s.textContent = `${r.status} · ${r.backend || '–'} · ${duration(r)} · ${cost(r.total_cost_usd)} · ${r.num_turns} turns${r.error_code ? ' · ' + r.error_code + ': ' + (r.error_message || '') : ''} — ${r.prompt}`;
  s.className = 'status-' + r.status;
  $('#cancel').disabled = r.status !== 'running' && r.status !== 'queued';
  return r;
}

async function download(e) {
  if (!sessionStorage.getItem(KEY)) return; // a plain link works without keys
  e.preventDefault();
  const a = e.currentTarget;
  const resp = await api(a.getAttribute('href'));
  const url = URL.createObjectURL(await resp.blob());
  const tmp = el('a', { href: url, download: a.dataset.name });
  document.body.append(tmp);
  tmp.click();
  tmp.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function addFile(id, f) {
  const list = $('#files');
  if (list.dataset.empty !== 'false') {
    list.replaceChildren();
    list.dataset.empty = 'false';
  }
  const a = el('a', { href: `/runs/${id}/files/${f.path.split('/').map(encodeURIComponent).join('/')}`, 'data-name': f.path.split('/').pop() }, f.path);
  a.addEventListener('click', download);
  list.append(el('li', {}, a, ` (${bytes(f.size)}, sha256 ${f.sha256.slice(0, 12)}…)`));
}

async function showRun(id) {
  show('run');
  $('#run-title').textContent = 'Run ' + id;
  $('#events').replaceChildren();
  $('#files').replaceChildren(el('li', {}, 'none yet'));
  $('#files').dataset.empty = 'true';
  try {
    await summary(id);
  } catch (err) {
    if (!(err instanceof Unauthorized)) $('#run-summary').textContent = err.message;
    return;
  }
  const events = $('#events');
  stopFollow = follow(`/runs/${id}/events`, (seq, data) => {
    let ev;
    try {
      ev = JSON.parse(data);
    } catch {
      return;
    }
    if (ev.type === 'file') addFile(id, ev);
    for (const [cls, text] of lines(ev)) events.append(el('li', { class: cls, 'data-seq': seq, 'data-type': ev.type }, text));
    if (ev.type === 'result' || ev.type === 'error' || (ev.type === 'sandbox' && ev.event === 'removed')) summary(id).catch(() => {});
  }, () => summary(id).catch(() => {}));
  timer = setInterval(() => {
    summary(id).catch(() => {});
    hostState();
  }, POLL_MS);
}

$('#cancel').addEventListener('click', async () => {
  const id = $('#run-title').textContent.replace('Run ', '');
  $('#cancel').disabled = true;
  try {
    await json(`/runs/${id}/cancel`, { method: 'POST' });
  } catch (err) {
    $('#run-summary').textContent = err.message;
  }
  summary(id).catch(() => {});
});

function route() {
  clearInterval(timer);
  if (stopFollow) stopFollow();
  stopFollow = null;
  const m = location.hash.match(/^#\/runs\/([A-Za-z0-9-]+)$/);
  if (m) {
    showRun(m[1]);
    hostState();
    return;
  }
  show('list');
  refreshList();
  timer = setInterval(refreshList, POLL_MS);
}

window.addEventListener('hashchange', route);
route();
