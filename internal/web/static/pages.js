// The pages. Each is async (main, ctx) => optional cleanup function; ctx
// has role, can(role), alive() (false once the user has navigated away)
// and arg (the path parameter, e.g. a job ID).

import * as api from './api.js';
import { h, clear, badge, progressBar, notice, bytes, when, money, table } from './ui.js';

// ---- Sites

async function sites(main, ctx) {
  const msg = h('div', { id: 'sites-msg' });
  const list = h('div', { id: 'sites-table' });
  main.append(
    h('div', { class: 'toolbar' }, h('h1', {}, 'Sites'), h('span', { class: 'spacer' }),
      h('button', { class: 'secondary', type: 'button', onclick: () => load() }, 'Reload')),
    msg, list);
  if (ctx.can('admin')) main.append(addSiteForm(msg, () => load()));
  else main.append(h('p', { class: 'muted' }, 'Adding and removing sites needs the admin role.'));

  const say = (text, kind) => { clear(msg).append(notice(text, kind)); };
  const act = async (label, fn) => {
    try { say(label + '…'); say(await fn(), 'ok'); } catch (e) { say(e.message, 'error'); }
    load();
  };

  async function load() {
    const rows = await api.get('/sites');
    if (!ctx.alive()) return;
    clear(list).append(table([
      { title: 'Name', cell: (s) => h('strong', {}, s.name) },
      { title: 'Kind', cell: (s) => s.kind },
      { title: 'Endpoint', cell: (s) => h('span', { class: 'mono' }, s.endpoint || '—') },
      { title: 'Health', cell: health },
      { title: 'VMs', class: 'num', cell: (s) => (s.health && s.health.vms) ?? '—' },
      { title: 'Last refresh', cell: (s) => when(s.health && s.health.last_refresh) },
      {
        title: '', class: 'actions', cell: (s) => [
          ctx.can('operator') && h('button', { class: 'secondary small', type: 'button', 'data-action': 'test',
            onclick: () => act('Testing ' + s.name, async () => {
              const r = await api.post('/sites/' + encodeURIComponent(s.name) + '/test');
              const i = r.info || {};
              return `${s.name}: reachable (${[i.kind, i.version].filter(Boolean).join(' ')}, ${r.latency_ms} ms)`;
            }) }, 'Test'), ' ',
          ctx.can('operator') && h('button', { class: 'secondary small', type: 'button', 'data-action': 'refresh',
            onclick: () => act('Refreshing ' + s.name, async () => {
              const r = await api.post('/sites/' + encodeURIComponent(s.name) + '/refresh');
              return `${s.name}: ${r.vms} VMs in the inventory`;
            }) }, 'Refresh'), ' ',
          ctx.can('admin') && h('button', { class: 'danger small', type: 'button', 'data-action': 'remove',
            onclick: () => {
              if (!confirm(`Remove site ${s.name}? Its inventory goes with it.`)) return;
              act('Removing ' + s.name, async () => { await api.del('/sites/' + encodeURIComponent(s.name)); return s.name + ' removed'; });
            } }, 'Remove'),
        ],
      },
    ], rows, 'No sites yet.' + (ctx.can('admin') ? ' Add one below.' : ''), (s) => ({ 'data-site': s.name })));
  }
  await load();
}

function health(s) {
  const hl = s.health;
  if (!hl || (!hl.ok && !hl.error)) return badge('unknown');
  if (hl.ok) return badge('ok');
  return h('span', { title: hl.error }, badge('error'), ' ', h('span', { class: 'muted' }, hl.error));
}

// addSiteForm: kind xen (URL, user, password) or fake (URL). After adding,
// the site is refreshed so its VMs show up at once.
function addSiteForm(msg, reload) {
  const name = h('input', { id: 'site-name', required: true, pattern: '[A-Za-z0-9][A-Za-z0-9._\\-]{0,62}', placeholder: 'dc1' });
  const kind = h('select', { id: 'site-kind' }, h('option', { value: 'xen' }, 'xen (XenServer / XCP-ng pool)'), h('option', { value: 'fake' }, 'fake (simulated)'));
  const url = h('input', { id: 'site-url', required: true, placeholder: 'https://pool-master.example' });
  const user = h('input', { id: 'site-user', placeholder: 'root', autocomplete: 'off' });
  const password = h('input', { id: 'site-password', type: 'password', autocomplete: 'new-password' });
  const xenOnly = [h('label', { for: 'site-user' }, 'User'), user, h('label', { for: 'site-password' }, 'Password'), password];
  const sync = () => {
    const xen = kind.value === 'xen';
    for (const el of xenOnly) el.hidden = !xen;
    user.required = xen;
    url.placeholder = xen ? 'https://pool-master.example' : 'fake://lab?vms=10';
  };
  kind.addEventListener('change', sync);
  const submit = h('button', { type: 'submit', id: 'site-add' }, 'Add site');
  const form = h('form', {
    class: 'grid', id: 'site-form',
    onsubmit: async (ev) => {
      ev.preventDefault();
      const req = { name: name.value.trim(), kind: kind.value, endpoint: url.value.trim() };
      if (kind.value === 'xen') {
        req.settings = { user: user.value.trim() };
        if (password.value) req.credentials = { password: password.value };
      }
      submit.disabled = true;
      clear(msg).append(notice('Adding ' + req.name + '…'));
      try {
        await api.post('/sites', req);
        let text = req.name + ' added';
        try {
          const r = await api.post('/sites/' + encodeURIComponent(req.name) + '/refresh');
          text += `; ${r.vms} VMs in the inventory`;
          clear(msg).append(notice(text, 'ok'));
        } catch (e) {
          clear(msg).append(notice(text + ', but refreshing it failed: ' + e.message, 'error'));
        }
        form.reset();
        sync();
      } catch (e) {
        clear(msg).append(notice(e.message, 'error'));
      } finally {
        submit.disabled = false;
        reload();
      }
    },
  },
  h('label', { for: 'site-name' }, 'Name'), name,
  h('label', { for: 'site-kind' }, 'Kind'), kind,
  h('label', { for: 'site-url' }, 'URL'), url,
  xenOnly,
  h('span'), h('div', {}, submit));
  sync();
  return h('section', { class: 'panel', id: 'site-add-panel' }, h('h2', {}, 'Add a site'), form);
}

// ---- VMs

async function vms(main, ctx) {
  let rows = [];
  const filter = h('input', { id: 'vm-filter', type: 'search', placeholder: 'Filter by name, site, state…', 'aria-label': 'Filter' });
  const count = h('span', { class: 'muted', id: 'vm-count' });
  const msg = h('div');
  const list = h('div', { id: 'vms-table' });
  const refresh = h('button', { class: 'secondary', type: 'button', id: 'vm-refresh', title: ctx.can('operator') ? 'Ask every site for its VMs, then reload' : 'Reload the inventory' }, 'Refresh');
  main.append(h('div', { class: 'toolbar' }, h('h1', {}, 'VMs'), h('span', { class: 'spacer' }), filter, refresh), msg, list, h('p', {}, count));

  const render = () => {
    const q = filter.value.trim().toLowerCase();
    const shown = q ? rows.filter((v) => [v.name, v.site, v.power_state, v.id, v.host, v.instance_type].some((x) => x && String(x).toLowerCase().includes(q))) : rows;
    clear(list).append(table([
      { title: 'Site', cell: (v) => v.site },
      { title: 'Name', cell: (v) => h('strong', {}, v.name || v.id) },
      { title: 'Power', cell: (v) => badge(v.power_state || 'unknown') },
      { title: 'CPUs', class: 'num', cell: (v) => v.cpus ?? '—' },
      { title: 'Memory', class: 'num', cell: (v) => bytes(v.memory_bytes) },
      { title: 'Disks', class: 'num', cell: (v) => disks(v.disks) },
      { title: 'Est. monthly cost', class: 'num', cell: (v) => money(v.monthly_cost) },
    ], shown, rows.length ? 'No VM matches the filter.' : 'No VMs: add a site and refresh it.', (v) => ({ 'data-vm': v.name })));
    count.textContent = `${shown.length} of ${rows.length} VMs` +
      (shown.some((v) => typeof v.monthly_cost === 'number') ? ` · est. ${money(shown.reduce((a, v) => a + (v.monthly_cost || 0), 0))} per month` : '');
  };
  const load = async () => {
    rows = await api.get('/vms');
    rows.sort((a, b) => (a.site + '\0' + a.name).localeCompare(b.site + '\0' + b.name));
    if (ctx.alive()) render();
  };
  filter.addEventListener('input', render);
  refresh.addEventListener('click', async () => {
    refresh.disabled = true;
    clear(msg);
    try {
      if (ctx.can('operator')) {
        const ss = await api.get('/sites');
        const res = await Promise.allSettled(ss.map((s) => api.post('/sites/' + encodeURIComponent(s.name) + '/refresh')));
        const bad = res.map((r, i) => r.status === 'rejected' ? ss[i].name + ': ' + r.reason.message : '').filter(Boolean);
        if (bad.length) msg.append(notice('Refresh failed for ' + bad.join('; '), 'error'));
      }
      await load();
    } catch (e) {
      msg.append(notice(e.message, 'error'));
    } finally {
      refresh.disabled = false;
    }
  });
  await load();
}

function disks(ds) {
  if (!ds || !ds.length) return '0';
  return `${ds.length} · ${bytes(ds.reduce((a, d) => a + (d.size || 0), 0))}`;
}

// ---- Jobs

function pct(j) {
  if (j.state === 'succeeded') return 100;
  const p = j.progress || {};
  return p.total > 0 ? (100 * p.done) / p.total : 0;
}

function barKind(j) {
  return j.state === 'succeeded' ? 'done' : (j.state === 'failed' || j.state === 'canceled') ? 'failed' : '';
}

const FINAL = new Set(['succeeded', 'failed', 'canceled']);

// EVENT_KINDS are the job event kinds internal/job writes. EventSource
// delivers named events only to listeners for that name, so the pages
// listen for each (and for unnamed messages).
const EVENT_KINDS = ['queued', 'started', 'resumed', 'step', 'progress', 'retrying', 'interrupted', 'cancel_requested', 'finished', 'message'];

async function jobs(main, ctx) {
  const list = h('div', { id: 'jobs-table' });
  main.append(h('div', { class: 'toolbar' }, h('h1', {}, 'Jobs'), h('span', { class: 'spacer' }),
    h('button', { class: 'secondary', type: 'button', onclick: () => load() }, 'Reload')), list);
  const load = async () => {
    const rows = await api.get('/jobs?limit=200');
    if (!ctx.alive()) return;
    clear(list).append(table([
      { title: 'Job', cell: (j) => h('a', { href: '#/jobs/' + encodeURIComponent(j.id), class: 'mono' }, j.id) },
      { title: 'Kind', cell: (j) => j.kind },
      { title: 'State', cell: (j) => badge(j.state) },
      { title: 'Progress', cell: (j) => progressBar(pct(j), barKind(j)) },
      { title: 'Phase', cell: (j) => (j.progress && j.progress.phase) || '' },
      { title: 'By', cell: (j) => j.created_by || '' },
      { title: 'Created', cell: (j) => when(j.created) },
    ], rows || [], 'No jobs yet.', (j) => ({ 'data-job': j.id })));
  };
  await load();
  // Live: any job event reloads the list (at most every 500 ms).
  const es = api.events('/events');
  let timer = null;
  const kick = () => { if (!timer) timer = setTimeout(() => { timer = null; load().catch(() => {}); }, 500); };
  for (const k of EVENT_KINDS) es.addEventListener(k, kick);
  return () => { es.close(); clearTimeout(timer); };
}

async function job(main, ctx) {
  const id = ctx.arg;
  const head = h('div', { id: 'job-head' });
  const msg = h('div');
  const evBody = h('tbody', { id: 'job-events' });
  main.append(
    h('div', { class: 'toolbar' }, h('h1', {}, 'Job ', h('span', { class: 'mono' }, id)), h('span', { class: 'spacer' }),
      h('a', { href: '#/jobs' }, '← all jobs')),
    msg, head,
    h('section', { class: 'panel' }, h('h2', {}, 'Events'),
      h('table', {}, h('thead', {}, h('tr', {}, ['#', 'Time', 'Event', 'Details'].map((t) => h('th', {}, t)))), evBody)));

  let j = await api.get('/jobs/' + encodeURIComponent(id));
  const render = () => {
    const p = j.progress || {};
    const steps = p.steps ? ` · step ${p.step || 0} of ${p.steps}` : '';
    clear(head).append(h('section', { class: 'panel' },
      h('div', { class: 'toolbar' }, h('span', { id: 'job-state', 'data-state': j.state }, badge(j.state)),
        h('span', { class: 'muted' }, (p.phase || '') + steps), h('span', { class: 'spacer' }),
        ctx.can('operator') && j.may_cancel && !FINAL.has(j.state) && h('button', { class: 'danger small', type: 'button',
          onclick: async () => { try { await api.post('/jobs/' + encodeURIComponent(id) + '/cancel'); } catch (e) { clear(msg).append(notice(e.message, 'error')); } } }, 'Cancel'),
        ctx.can('operator') && (j.state === 'failed' || j.state === 'canceled') && h('button', { class: 'secondary small', type: 'button',
          onclick: async () => { try { await api.post('/jobs/' + encodeURIComponent(id) + '/retry'); follow(); } catch (e) { clear(msg).append(notice(e.message, 'error')); } } }, 'Retry')),
      h('div', { id: 'job-progress' }, progressBar(pct(j), barKind(j), true)),
      h('p', { class: 'muted' }, p.total ? `${bytes(p.done)} of ${bytes(p.total)}` : ''),
      h('dl', { class: 'facts' },
        h('dt', {}, 'Kind'), h('dd', {}, j.kind),
        h('dt', {}, 'Created'), h('dd', {}, when(j.created) + (j.created_by ? ' by ' + j.created_by : '')),
        h('dt', {}, 'Updated'), h('dd', {}, when(j.updated)),
        h('dt', {}, 'Attempt'), h('dd', {}, String(j.attempt || 0)),
        h('dt', {}, 'Arguments'), h('dd', { class: 'mono wrap' }, JSON.stringify(j.args)),
        j.result && [h('dt', {}, 'Result'), h('dd', { class: 'mono wrap' }, JSON.stringify(j.result))],
        j.error && [h('dt', {}, 'Error'), h('dd', {}, h('span', { class: 'badge bad' }, j.error_code || 'error'), ' ', j.error)])));
  };
  render();

  // Follow the job's event stream: progress events update the bar in
  // place; other events re-read the job. The server ends the stream after
  // "finished"; closing it here stops EventSource from reconnecting.
  let es = null;
  let lastSeq = 0;
  const refetch = async () => {
    try { j = await api.get('/jobs/' + encodeURIComponent(id)); if (ctx.alive()) render(); } catch { /* shown on next event */ }
  };
  function follow() {
    if (es) es.close();
    es = api.events('/jobs/' + encodeURIComponent(id) + '/events' + (lastSeq ? '?after=' + lastSeq : ''));
    const on = (e) => {
      const ev = JSON.parse(e.data);
      lastSeq = Math.max(lastSeq, ev.seq);
      const tone = ev.kind === 'finished' ? (ev.payload && ev.payload.state === 'succeeded' ? 'ok' : 'bad') : ev.kind === 'retrying' || ev.kind === 'interrupted' ? 'warn' : 'info';
      evBody.append(h('tr', { 'data-event': ev.kind }, h('td', { class: 'num' }, ev.seq), h('td', {}, when(ev.time)),
        h('td', {}, badge(ev.kind, tone)), h('td', { class: 'mono wrap' }, ev.payload ? JSON.stringify(ev.payload) : '')));
      if (ev.kind === 'progress') {
        j.progress = ev.payload;
        if (j.state === 'queued') j.state = 'running';
        render();
      } else {
        if (ev.kind === 'finished') { es.close(); }
        refetch();
      }
    };
    for (const k of EVENT_KINDS) es.addEventListener(k, on);
    es.addEventListener('error', (e) => {
      if (e.data) { clear(msg).append(notice('Event stream: ' + e.data, 'error')); es.close(); }
    });
  }
  follow();
  return () => { if (es) es.close(); };
}

// ---- Images

const FORMATS = ['qcow2', 'vhd', 'vhdx', 'vmdk', 'vdi', 'raw', 'xva', 'ova'];

async function images(main, ctx) {
  main.append(h('h1', {}, 'Images'));
  if (!ctx.can('operator')) {
    main.append(notice('Converting images needs the operator role.'));
    return;
  }
  const msg = h('div');
  const src = h('input', { id: 'conv-src', required: true, placeholder: 'disk.vmdk' });
  const srcFormat = h('select', { id: 'conv-src-format' }, h('option', { value: '' }, 'detect'), FORMATS.map((f) => h('option', { value: f }, f)));
  const dst = h('input', { id: 'conv-dst', required: true, placeholder: 'disk.qcow2' });
  const dstFormat = h('select', { id: 'conv-format' }, FORMATS.map((f) => h('option', { value: f }, f)));
  const submit = h('button', { type: 'submit', id: 'conv-submit' }, 'Start conversion');
  dst.addEventListener('input', () => {
    const ext = dst.value.split('.').pop().toLowerCase();
    if (FORMATS.includes(ext)) dstFormat.value = ext;
  });
  const form = h('form', {
    class: 'grid', id: 'convert-form',
    onsubmit: async (ev) => {
      ev.preventDefault();
      submit.disabled = true;
      clear(msg);
      try {
        const body = { src: src.value.trim(), dst: dst.value.trim(), dst_format: dstFormat.value };
        if (srcFormat.value) body.src_format = srcFormat.value;
        const r = await api.post('/images/convert', body);
        location.hash = '#/jobs/' + encodeURIComponent(r.metadata.id);
      } catch (e) {
        msg.append(notice(e.message, 'error'));
      } finally {
        submit.disabled = false;
      }
    },
  },
  h('label', { for: 'conv-src' }, 'Source path'), src,
  h('label', { for: 'conv-src-format' }, 'Source format'), srcFormat,
  h('label', { for: 'conv-dst' }, 'Output path'), dst,
  h('label', { for: 'conv-format' }, 'Output format'), dstFormat,
  h('span'), h('div', {}, submit));
  main.append(msg, h('section', { class: 'panel' }, h('h2', {}, 'Convert a disk image'),
    h('p', { class: 'muted' }, "Paths are relative to the server's images directory (ferry serve --images-dir). The conversion runs as a job."),
    form));
}

// ---- Audit

async function audit(main, ctx) {
  const N = 500;
  const verify = await api.get('/audit/verify');
  const after = Math.max(0, (verify.head_seq || 0) - N);
  const rows = ((await api.get(`/audit?after=${after}&limit=${N}`)) || []).slice().reverse();
  if (!ctx.alive()) return;
  const v = verify.ok
    ? notice(`Hash chain verified: ${verify.rows} entries intact (head #${verify.head_seq}).`, 'ok')
    : notice(`Hash chain BROKEN at entry #${verify.first_bad}: ${verify.problem}`, 'error');
  v.id = 'audit-verify';
  v.dataset.ok = String(!!verify.ok);
  main.append(h('h1', {}, 'Audit log'), v,
    h('div', { id: 'audit-table' }, table([
      { title: '#', class: 'num', cell: (e) => e.seq },
      { title: 'Time', cell: (e) => when(e.time) },
      { title: 'Actor', cell: (e) => e.actor },
      { title: 'Action', cell: (e) => h('span', { class: 'mono' }, e.action) },
      { title: 'Target', cell: (e) => h('span', { class: 'mono' }, e.target) },
      { title: 'Outcome', cell: (e) => badge(e.outcome, /^2/.test(e.outcome) ? 'ok' : /^4/.test(e.outcome) ? 'warn' : 'bad') },
    ], rows, 'The audit log is empty.')),
    h('p', { class: 'muted' }, `Newest first; the last ${Math.min(N, rows.length)} entries.`));
}

export const pages = { sites, vms, jobs, job, images, audit };
