/* The session's tokens and every call to this origin's API.
 *
 * Tokens live in this module only: never in web storage or a cookie, so no other script (there is none:
 * the CSP allows only this origin's files) and no other site (no cookie rides along) can use them. */
import { note } from './dom.js';

export const SESSION_OVER = 'Your session has ended. Please sign in again.';

export const session = {
  access: null,       // the access token: in memory only
  refresh: null,      // the refresh token: in memory only
  refreshTimer: 0,
  refreshing: null,   // one refresh at a time: parallel ones would trip reuse detection
  me: null,
  epoch: 0,           // bumped at sign-out, so late answers of an old session draw nothing
};

export class SessionEnded extends Error {}

let onEnd = () => {};  // what the page does when the session ends (main.js says)

export function whenSessionEnds(fn) { onEnd = fn; }

export function isAdmin() { return session.me && session.me.role === 'admin'; }

export function keepTokens(pair) {
  session.access = pair.access_token;
  session.refresh = pair.refresh_token;
  clearTimeout(session.refreshTimer);
  // Refresh a minute before expiry (or at three quarters of a short lifetime).
  const life = Number(pair.expires_in) || 900;
  const wait = life > 240 ? life - 60 : life * 0.75;
  session.refreshTimer = setTimeout(() => { refreshTokens().then(onRefreshResult); }, wait * 1000);
}

function onRefreshResult(result) {
  if (result === 'gone') endSession(SESSION_OVER);
  else if (result === 'unavailable') session.refreshTimer = setTimeout(() => refreshTokens().then(onRefreshResult), 5000);
}

export function postJson(path, body) {
  return fetch(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    body: JSON.stringify(body),
    cache: 'no-store',
    credentials: 'omit',
  });
}

/* 'ok', 'gone' (the session is over) or 'unavailable' (try later; the refresh token was not used). */
export function refreshTokens() {
  if (!session.refresh) return Promise.resolve('gone');
  if (!session.refreshing) {
    const epoch = session.epoch;
    session.refreshing = (async () => {
      try {
        const res = await postJson('/v1/auth/refresh', { refresh_token: session.refresh });
        if (epoch !== session.epoch) return 'gone';
        if (res.ok) { keepTokens(await res.json()); return 'ok'; }
        return res.status >= 500 || res.status === 429 ? 'unavailable' : 'gone';
      } catch (err) {
        return 'unavailable';
      } finally {
        session.refreshing = null;
      }
    })();
  }
  return session.refreshing;
}

export async function api(path, { method = 'GET', body } = {}) {
  const epoch = session.epoch;
  const send = () => {
    const headers = { Accept: 'application/json', Authorization: `Bearer ${session.access}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    return fetch(path, {
      method, headers, cache: 'no-store', credentials: 'omit',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  };
  if (!session.access) throw new SessionEnded();
  let res = await send();
  if (res.status === 401 && epoch === session.epoch) {
    const result = await refreshTokens();
    if (result === 'ok') res = await send();
  }
  if (epoch !== session.epoch) throw new SessionEnded();
  if (res.status === 401) {
    endSession(SESSION_OVER);
    throw new SessionEnded();
  }
  let data = null;
  if (res.status !== 204) {
    try { data = await res.json(); } catch (err) { data = null; }
  }
  if (epoch !== session.epoch) throw new SessionEnded();
  return { ok: res.ok, status: res.status, data, total: Number(res.headers.get('X-Total-Count') || 0) };
}

/* The status of a refused call, and the server's detail when it gave one. */
export function refusal(result) {
  const detail = result.data && typeof result.data.detail === 'string' ? result.data.detail : '';
  return `${result.status}${detail ? `: ${detail}` : ''}`;
}

/* Run a loader; a network failure becomes a note in its section, an ended session nothing. */
export async function guarded(noteId, fn) {
  try {
    await fn();
  } catch (err) {
    if (err instanceof SessionEnded) return;
    if (noteId) note(noteId, 'The server cannot be reached right now; retrying.');
  }
}

export function forgetTokens() {
  session.epoch += 1;
  session.access = null;
  session.refresh = null;
  session.me = null;
  clearTimeout(session.refreshTimer);
}

/* Back to the sign-in form, with nothing of the old session left on the page. */
export function endSession(message) {
  if (!session.access && !session.refresh) return;
  forgetTokens();
  onEnd(message || '');
}
