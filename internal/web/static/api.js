// The REST API client: every call goes to /api/v1 with the token from
// sessionStorage as a Bearer header. A 401 forgets the token and sends the
// user to the sign-in page.

const KEY = 'ferry.token';
export const PREFIX = '/api/v1';

export function token() { return sessionStorage.getItem(KEY) || ''; }
export function setToken(t) { sessionStorage.setItem(KEY, t); }
export function clearToken() { sessionStorage.removeItem(KEY); }

export class APIError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// request sends one API call and returns the answer's metadata (sync) or
// the whole envelope (async: {operation, metadata}).
export async function request(method, path, body, tok = token()) {
  const headers = { Accept: 'application/json' };
  if (tok) headers.Authorization = 'Bearer ' + tok;
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(PREFIX + path, init);
  let env = null;
  if ((res.headers.get('Content-Type') || '').startsWith('application/json')) env = await res.json();
  if (!res.ok || !env || env.type === 'error') {
    const e = env && env.error ? env.error : { code: 'internal', message: res.status + ' ' + res.statusText };
    if (res.status === 401) {
      clearToken();
      if (location.hash !== '#/signin') location.hash = '#/signin';
    }
    throw new APIError(res.status, e.code, e.message);
  }
  return env.type === 'async' ? env : env.metadata;
}

export const get = (p) => request('GET', p);
export const post = (p, b) => request('POST', p, b);
export const del = (p) => request('DELETE', p);

// events opens a server-sent event stream; EventSource cannot send
// headers, so the token goes as ?access_token= (accepted by the event
// streams only).
export function events(path) {
  const sep = path.includes('?') ? '&' : '?';
  return new EventSource(PREFIX + path + sep + 'access_token=' + encodeURIComponent(token()));
}

// Roles in rank order, as internal/auth.
const RANK = { viewer: 1, operator: 2, admin: 3 };
export function allows(role, need) { return (RANK[role] || 0) >= RANK[need]; }
