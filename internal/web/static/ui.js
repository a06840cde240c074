// Small DOM helpers shared by the pages. Text always goes in as text
// nodes, never as HTML.

// h builds an element: h('td', {class: 'num'}, 'text', child, ...).
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

export function clear(el) { el.replaceChildren(); return el; }

const TONE = {
  ok: 'ok', succeeded: 'ok', running: 'info', healthy: 'ok',
  queued: 'info', canceling: 'warn', suspended: 'warn', paused: 'warn', pending: 'warn',
  halted: '', canceled: 'warn', failed: 'bad', error: 'bad', unknown: '',
};

export function badge(text, tone) {
  const t = tone !== undefined ? tone : (TONE[text] ?? '');
  return h('span', { class: 'badge ' + t, 'data-status': text }, text);
}

// progressBar renders pct (0..100) as a bar; kind adds done/failed colours.
export function progressBar(pct, kind, big) {
  const p = Math.max(0, Math.min(100, Math.round(pct)));
  const bar = h('div', { class: 'bar' });
  bar.style.width = p + '%';
  return h('div', {
    class: 'progress' + (kind ? ' ' + kind : '') + (big ? ' big' : ''),
    role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': String(p),
  }, bar, h('span', { class: 'label' }, p + '%'));
}

export function notice(text, kind) {
  return h('div', { class: 'notice' + (kind ? ' ' + kind : ''), role: kind === 'error' ? 'alert' : 'status' }, text);
}

export function bytes(n) {
  if (n === undefined || n === null) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0).replace(/\.0$/, '')) + ' ' + u[i];
}

export function when(t) {
  if (!t || t.startsWith('0001-')) return '—';
  const d = new Date(t);
  return isNaN(d) ? t : d.toLocaleString();
}

export function money(n) {
  return typeof n === 'number' ? n.toFixed(2) : '—';
}

// table renders rows under headers: cols is [{title, class, cell(row)}].
export function table(cols, rows, empty, rowAttrs) {
  const body = rows.length
    ? rows.map((r) => h('tr', rowAttrs ? rowAttrs(r) : {}, cols.map((c) => h('td', { class: c.class }, c.cell(r)))))
    : [h('tr', {}, h('td', { class: 'empty', colspan: String(cols.length) }, empty || 'Nothing here yet.'))];
  return h('table', {}, h('thead', {}, h('tr', {}, cols.map((c) => h('th', { class: c.class }, c.title)))), h('tbody', {}, body));
}
