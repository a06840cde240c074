// The shell: sign-in state, top bar, left navigation and the fragment
// router (#/sites, #/vms, #/jobs, #/jobs/ID, #/images, #/audit).

import * as api from './api.js';
import { h, clear, notice } from './ui.js';
import { pages } from './pages.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const signout = document.getElementById('signout');
const version = document.getElementById('version');

let me = null; // the signed-in principal: {token_id, name, role}
let cleanup = null; // closes the current page's event streams
let generation = 0;

function showShell(on) {
  nav.hidden = !on;
  who.hidden = !on;
  signout.hidden = !on;
}

function signinPage() {
  showShell(false);
  me = null;
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', placeholder: 'ferry_…', required: true, 'aria-label': 'API token' });
  const msg = h('div');
  const form = h('form', {
    id: 'signin-form',
    onsubmit: async (ev) => {
      ev.preventDefault();
      clear(msg);
      const tok = input.value.trim();
      try {
        me = await api.request('GET', '/whoami', undefined, tok);
        api.setToken(tok);
        if (location.hash === '#/sites') route(); else location.hash = '#/sites';
      } catch (e) {
        msg.append(notice(e.status === 401 ? 'That token is not valid.' : e.message, 'error'));
      }
    },
  },
  h('label', { for: 'token' }, 'API token'), input,
  h('button', { type: 'submit', id: 'signin-submit' }, 'Sign in'));
  clear(main).append(h('section', { class: 'panel signin', id: 'page-signin' },
    h('h1', {}, 'Sign in to ferry'),
    h('p', { class: 'muted' }, 'Paste an API token (ferry token create, or the admin token printed on first start). It is kept in this tab only.'),
    msg, form));
  input.focus();
}

async function route() {
  const gen = ++generation;
  if (cleanup) { try { cleanup(); } catch { /* already closed */ } cleanup = null; }
  const hash = location.hash || '#/sites';
  if (hash === '#/signin' || !api.token()) {
    if (hash !== '#/signin') location.hash = '#/signin';
    signinPage();
    return;
  }
  if (!me) {
    try { me = await api.get('/whoami'); } catch (e) { if (e.status !== 401) showError(e); return; }
    if (gen !== generation) return;
  }
  showShell(true);
  who.textContent = (me.name || me.token_id) + ' · ' + me.role;
  const [, name, arg] = hash.split('/');
  const page = name === 'jobs' && arg ? 'job' : name;
  for (const a of nav.querySelectorAll('a')) a.classList.toggle('active', a.dataset.page === name);
  const fn = pages[page];
  if (!fn) { clear(main).append(notice('No such page: ' + hash, 'error')); return; }
  const ctx = {
    role: me.role,
    can: (need) => api.allows(me.role, need),
    alive: () => gen === generation,
    arg: arg ? decodeURIComponent(arg) : '',
  };
  clear(main);
  try {
    const c = await fn(main, ctx);
    if (gen === generation) cleanup = c || null; else if (c) c();
  } catch (e) {
    if (gen === generation && e.status !== 401) showError(e);
  }
}

function showError(e) { clear(main).append(notice(e.message || String(e), 'error')); }

signout.addEventListener('click', () => { api.clearToken(); me = null; location.hash = '#/signin'; });
window.addEventListener('hashchange', route);
fetch(api.PREFIX + '/health').then((r) => r.json()).then((b) => {
  if (b.metadata && b.metadata.version) version.textContent = b.metadata.version;
}).catch(() => {});
route();
