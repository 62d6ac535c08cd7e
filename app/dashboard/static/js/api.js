// The dashboard's only way to the server: the public /v1 API with the user's key.
// The key lives in sessionStorage, so it is gone when the browser tab is closed.

const KEY = 'secateurs.apiKey';

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  signIn(key) { sessionStorage.setItem(KEY, key); },
  signOut() { sessionStorage.removeItem(KEY); },
};

/** A failed request, carrying the problem+json fields when the server sent them. */
export class ApiError extends Error {
  constructor(status, problem) {
    const detail = problem?.detail || problem?.title || `Request failed with HTTP ${status}`;
    super(detail);
    this.status = status;
    this.code = problem?.code || null;
    this.detail = detail;
  }
}

function problemError(status, problem) {
  // FastAPI's default body is {"detail": [...]} for validation errors: flatten it.
  if (problem && Array.isArray(problem.detail)) {
    problem.detail = problem.detail.map((d) => `${(d.loc || []).join('.')}: ${d.msg}`).join('; ');
  }
  return new ApiError(status, problem);
}

async function toError(res) {
  let problem = null;
  try { problem = await res.json(); } catch { /* not JSON: keep the status alone */ }
  return problemError(res.status, problem);
}

/** Who gets told when the key stops working (the shell shows the sign-in form). */
let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

export function authHeaders(key = session.key) {
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/**
 * Call `/v1${path}`. `json` is sent as a JSON body, `form` as multipart. Resolves to the
 * parsed JSON (or null); rejects with ApiError. A 401 also signs the user out.
 */
export async function api(path, { method = 'GET', json, form, headers = {}, signal, key } = {}) {
  const init = { method, headers: { Accept: 'application/json', ...authHeaders(key), ...headers }, signal };
  if (json !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  const res = await fetch(`/v1${path}`, init);
  if (!res.ok) {
    const err = await toError(res);
    if (res.status === 401 && key === undefined) onUnauthorized(err);
    throw err;
  }
  if (res.status === 204) return null;
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

/**
 * POST a multipart form to `/v1${path}`, reporting upload progress (0..1) to `onProgress`:
 * fetch() cannot report it, XMLHttpRequest can. Resolves and rejects like api().
 */
export function upload(path, form, { onProgress, signal } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `/v1${path}`);
    for (const [k, v] of Object.entries({ Accept: 'application/json', ...authHeaders() })) {
      xhr.setRequestHeader(k, v);
    }
    xhr.upload.addEventListener('progress', (e) => {
      if (e.lengthComputable) onProgress?.(e.loaded / e.total);
    });
    xhr.addEventListener('load', () => {
      let body = null;
      try { body = xhr.responseText ? JSON.parse(xhr.responseText) : null; } catch { body = null; }
      if (xhr.status >= 200 && xhr.status < 300) { resolve(body); return; }
      const err = problemError(xhr.status, body);
      if (xhr.status === 401) onUnauthorized(err);
      reject(err);
    });
    xhr.addEventListener('error', () => reject(new ApiError(0, {
      detail: 'The upload did not reach the server (connection lost or refused).' })));
    xhr.addEventListener('abort', () => reject(new DOMException('Upload aborted', 'AbortError')));
    signal?.addEventListener('abort', () => xhr.abort(), { once: true });
    xhr.send(form);
  });
}

/** Download `/v1${path}` with the auth header and hand it to the browser as `filename`. */
export async function download(path, filename, { signal } = {}) {
  const res = await fetch(`/v1${path}`, { headers: authHeaders(), signal });
  if (!res.ok) throw await toError(res);
  const blob = await res.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  // The browser has started the download by now; give it a moment before freeing the blob.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return blob.size;
}

// Model names are looked up once per page load: jobs only carry the model's id.
const modelCache = new Map();
export function modelInfo(id) {
  if (!id) return Promise.resolve(null);
  if (!modelCache.has(id)) {
    modelCache.set(id, api(`/models/${encodeURIComponent(id)}`).catch(() => null));
  }
  return modelCache.get(id);
}
export function forgetModels() { modelCache.clear(); }

// A succeeded job's report never changes: fetch each once per page load (the job list
// shows a few numbers of every succeeded row, the compare view whole reports).
const reportCache = new Map();
export function jobReport(id, { signal } = {}) {
  if (!reportCache.has(id)) {
    const pending = api(`/jobs/${encodeURIComponent(id)}/report`, { signal });
    pending.catch(() => reportCache.delete(id));  // a later view may try again
    reportCache.set(id, pending);
  }
  return reportCache.get(id);
}

/**
 * Every item of a paged list (`/jobs`, `/models`, ...), following the cursors up to
 * `maxPages` pages of 200; `more` tells whether items were left.
 */
export async function listAll(path, { signal, maxPages = 5 } = {}) {
  const items = [];
  let cursor = null;
  for (let i = 0; i < maxPages; i += 1) {
    const q = new URLSearchParams({ limit: '200' });
    if (cursor) q.set('cursor', cursor);
    const sep = path.includes('?') ? '&' : '?';
    const page = await api(`${path}${sep}${q}`, { signal });
    items.push(...page.items);
    cursor = page.next_cursor;
    if (!cursor) return { items, more: false };
  }
  return { items, more: true };
}
