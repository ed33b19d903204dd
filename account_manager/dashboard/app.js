/* Handshake admin dashboard (SPEC §8).
 *
 * Tokens live in this closure only: never in web storage or a cookie, so no other
 * script (there is none: the CSP allows only this file) and no other site (no cookie rides along) can use
 * them. Everything on the page comes from the /v1/admin API of this origin. Text from the server is only
 * ever set with textContent, never parsed as HTML: usernames in events are typed by strangers. */
(() => {
  'use strict';

  // From the server's own list (shared.models.EventType), written into the page it serves.
  const EVENT_TYPES = (document.querySelector('meta[name="handshake-event-types"]')?.content || '')
    .split(',').filter(Boolean);
  const BAD_TYPES = new Set([
    'login_failed', 'login_locked', 'refresh_reuse_detected', 'mqtt_auth_failed', 'acl_denied',
    'command_timeout', 'device_disabled', 'session_revoked', 'mfa_failed',
  ]);
  const READERS = new Set(['admin', 'support']);
  const PAGE_SIZES = [20, 50, 100, 200];  // rows per table page; the first is the default
  const MAX_EVENTS = 200;     // events kept on screen
  const USER_ID = /^[a-z0-9]{20}$/;
  const SVG = 'http://www.w3.org/2000/svg';

  const $ = (id) => document.getElementById(id);

  /* ---- state --------------------------------------------------------------------------------- */

  const session = {
    access: null,       // the access token: in memory only
    refresh: null,      // the refresh token: in memory only
    refreshTimer: 0,
    refreshing: null,   // one refresh at a time: parallel ones would trip reuse detection
    me: null,
    epoch: 0,           // bumped at sign-out, so late answers of an old session draw nothing
    timers: [],
  };
  const feed = { controller: null, gen: 0, lastId: null, retryMs: 2000, backoff: 0, timer: 0, seen: new Set() };
  // One table's view: its page (offset, size), filters, the total of the last answer, and the number of
  // the last request, so an answer overtaken by a newer one (typing in the search box) draws nothing.
  const users = { offset: 0, size: PAGE_SIZES[0], total: 0, query: '', role: '', seq: 0 };
  const devices = { offset: 0, size: PAGE_SIZES[0], total: 0, query: '', online: '', seq: 0 };
  const timeline = { uid: null };
  const names = new Map();  // user id -> username, from what the API has shown us
  let armed = null;         // a button waiting for its confirming second click
  let hourly = [];
  const pending = {};       // debounce timers by name

  class SessionEnded extends Error {}

  /* ---- DOM helpers --------------------------------------------------------------------------- */

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key === 'on') for (const [name, fn] of Object.entries(value)) node.addEventListener(name, fn);
      else if (key === 'data') for (const [name, v] of Object.entries(value)) node.dataset[name] = v;
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === 'string' || typeof child === 'number' ? String(child) : child);
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    for (const child of children) node.append(child);
    return node;
  }

  function setText(id, value) { $(id).textContent = value; }

  function note(id, message) {
    const node = $(id);
    node.textContent = message || '';
    node.hidden = !message;
  }

  function debounce(name, ms, fn) {
    clearTimeout(pending[name]);
    pending[name] = setTimeout(fn, ms);
  }

  function fmtNumber(n) { return typeof n === 'number' ? n.toLocaleString() : '–'; }

  function parseTime(iso) { return iso ? new Date(iso) : null; }

  const pad2 = (n) => String(n).padStart(2, '0');

  /* Every moment on the page is written this one way: local 24-hour time, HH:MM:SS, after the date
     (YYYY-MM-DD) unless it is today. Its tooltip gives the full date, the time zone and how long ago. */
  function fmtTime(date) {
    const clock = `${pad2(date.getHours())}:${pad2(date.getMinutes())}:${pad2(date.getSeconds())}`;
    if (date.toDateString() === new Date().toDateString()) return clock;
    return `${date.getFullYear()}-${pad2(date.getMonth() + 1)}-${pad2(date.getDate())} ${clock}`;
  }

  function fmtAgo(date) {
    const s = Math.round((Date.now() - date.getTime()) / 1000);
    if (s < 45) return 'just now';
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }

  function timeEl(iso) {
    const date = parseTime(iso);
    if (!date || Number.isNaN(date.getTime())) return el('span', { class: 'sub', text: 'never' });
    const full = date.toLocaleString([], { dateStyle: 'full', timeStyle: 'long' });
    return el('time', { datetime: iso, title: `${full} (${fmtAgo(date)})`, text: fmtTime(date) });
  }

  /* ---- tokens and the API -------------------------------------------------------------------- */

  function keepTokens(pair) {
    session.access = pair.access_token;
    session.refresh = pair.refresh_token;
    clearTimeout(session.refreshTimer);
    // Refresh a minute before expiry (or at three quarters of a short lifetime).
    const life = Number(pair.expires_in) || 900;
    const wait = life > 240 ? life - 60 : life * 0.75;
    session.refreshTimer = setTimeout(() => { refreshTokens().then(onRefreshResult); }, wait * 1000);
  }

  function onRefreshResult(result) {
    if (result === 'gone') endSession('Your session has ended. Please sign in again.');
    else if (result === 'unavailable') session.refreshTimer = setTimeout(() => refreshTokens().then(onRefreshResult), 5000);
  }

  /* 'ok', 'gone' (the session is over) or 'unavailable' (try later; the refresh token was not used). */
  function refreshTokens() {
    if (!session.refresh) return Promise.resolve('gone');
    if (!session.refreshing) {
      const epoch = session.epoch;
      session.refreshing = (async () => {
        try {
          const res = await fetch('/v1/auth/refresh', {
            method: 'POST',
            headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
            body: JSON.stringify({ refresh_token: session.refresh }),
            cache: 'no-store',
            credentials: 'omit',
          });
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

  async function api(path, { method = 'GET', body } = {}) {
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
      endSession('Your session has ended. Please sign in again.');
      throw new SessionEnded();
    }
    let data = null;
    if (res.status !== 204) {
      try { data = await res.json(); } catch (err) { data = null; }
    }
    if (epoch !== session.epoch) throw new SessionEnded();
    return { ok: res.ok, status: res.status, data, total: Number(res.headers.get('X-Total-Count') || 0) };
  }

  function refusal(result) {
    const detail = result.data && typeof result.data.detail === 'string' ? result.data.detail : '';
    return `${result.status}${detail ? `: ${detail}` : ''}`;
  }

  /* Run a loader; a network failure becomes a note in its section, an ended session nothing. */
  async function guarded(noteId, fn) {
    try {
      await fn();
    } catch (err) {
      if (err instanceof SessionEnded) return;
      if (noteId) note(noteId, 'The server cannot be reached right now; retrying.');
    }
  }

  /* ---- signing in and out -------------------------------------------------------------------- */

  function showView(name) {
    $('login-view').hidden = name !== 'login';
    $('dashboard-view').hidden = name !== 'dashboard';
    $('denied-view').hidden = name !== 'denied';
    $('enrol-view').hidden = name !== 'enrol';
    $('whoami').hidden = name !== 'dashboard';
  }

  function loginError(message) {
    const node = $('login-error');
    node.textContent = message || '';
    node.hidden = !message;
  }

  /* The password step, then (for an account with a second factor) the code step: the server's
   * mfa_token of the first is kept in this closure only, like the tokens. */
  const login = { mfaToken: null };

  function showCodeStep(on) {
    $('login-password-step').hidden = on;
    $('login-code-step').hidden = !on;
    $('login-restart').hidden = !on;
    for (const id of ['login-username', 'login-password']) $(id).disabled = on;
    $('login-code').disabled = !on;
    $('login-code').value = '';
    $('login-submit').textContent = on ? 'Continue' : 'Sign in';
    if (on) $('login-code').focus();
  }

  function restartLogin(message) {
    login.mfaToken = null;
    showCodeStep(false);
    $('login-password').value = '';
    loginError(message || '');
    $('login-password').focus();
  }

  function postJson(path, body) {
    return fetch(path, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
    });
  }

  async function signIn(event) {
    event.preventDefault();
    loginError('');
    const button = $('login-submit');
    let body;
    let path;
    if (login.mfaToken) {
      const typed = $('login-code').value.trim();
      if (!typed) { loginError('Enter the code.'); return; }
      path = '/v1/auth/mfa';
      body = /^[0-9 ]+$/.test(typed)
        ? { mfa_token: login.mfaToken, code: typed.replace(/ /g, '') }
        : { mfa_token: login.mfaToken, recovery_code: typed };
    } else {
      const username = $('login-username').value.trim();
      const password = $('login-password').value;
      if (!username || !password) { loginError('Enter your username and password.'); return; }
      path = '/v1/auth/login';
      body = { username, password };
    }
    button.disabled = true;
    try {
      let res;
      let data = null;
      try {
        res = await postJson(path, body);
        try { data = await res.json(); } catch (err) { data = null; }
      } catch (err) {
        loginError('The server cannot be reached.');
        return;
      }
      const code = data && typeof data.error === 'string' ? data.error : '';
      if (!res.ok) {
        if (code === 'mfa_required' && data.mfa_token) {
          login.mfaToken = data.mfa_token;
          showCodeStep(true);
          return;
        }
        if (code === 'invalid_mfa_token') { restartLogin('That sign-in took too long. Please sign in again.'); return; }
        const retry = res.headers.get('Retry-After');
        loginError({
          invalid_code: 'That code is wrong, too old or already used.',
          validation_error: 'That is not a code: six digits, or a recovery code as it was shown.',
        }[code] || {
          401: 'Wrong username or password.',
          403: 'This account is disabled.',
          429: `Too many attempts. Try again${retry ? ` in ${retry} s` : ' later'}.`,
          503: 'The service is busy or unavailable. Try again shortly.',
        }[res.status] || `Sign-in failed (${res.status}).`);
        return;
      }
      login.mfaToken = null;
      showCodeStep(false);
      $('login-password').value = '';
      keepTokens(data);
      await enter();
    } finally {
      button.disabled = false;
    }
  }

  async function enter() {
    let me;
    try {
      me = await api('/v1/users/me');
    } catch (err) {
      if (!(err instanceof SessionEnded)) loginError('The server cannot be reached.');
      return;
    }
    if (!me.ok) { loginError(`Sign-in failed (${me.status}).`); forgetTokens(); return; }
    session.me = me.data;
    names.set(me.data.id, me.data.username);
    if (!READERS.has(me.data.role)) { await deny(me.data); return; }
    // An account that must enrol a second factor first gets tokens for that only (SPEC §12).
    let probe;
    try { probe = await api('/v1/admin/stats'); } catch (err) { return; }
    if (probe.status === 403 && probe.data && probe.data.error === 'mfa_enrolment_required') {
      await startEnrolment(me.data);
      return;
    }
    setText('me-name', me.data.username);
    setText('me-role', me.data.role);
    document.body.dataset.role = me.data.role;
    showView('dashboard');
    start();
  }

  /* ---- enrolling a second factor --------------------------------------------------------------- */

  function enrolError(message) {
    const node = $('enrol-error');
    node.textContent = message || '';
    node.hidden = !message;
  }

  async function startEnrolment(me) {
    setText('enrol-intro', `${me.username} is a ${me.role} account, and those must have a second factor before they can use the dashboard. It takes a minute.`);
    $('enrol-secret-step').hidden = false;
    $('enrol-codes-step').hidden = true;
    $('enrol-codes').replaceChildren();
    enrolError('');
    showView('enrol');
    let r;
    try { r = await api('/v1/users/me/mfa/totp', { method: 'POST' }); } catch (err) { return; }
    if (!r.ok) { enrolError(`The secret could not be made (${refusal(r)}).`); return; }
    setText('enrol-secret', r.data.secret);
    setText('enrol-uri', r.data.otpauth_uri);
    $('enrol-code').value = '';
    $('enrol-code').focus();
  }

  async function confirmEnrolment(event) {
    event.preventDefault();
    enrolError('');
    const typed = $('enrol-code').value.replace(/ /g, '');
    if (!/^[0-9]{6}$/.test(typed)) { enrolError('Enter the six digits the app shows.'); return; }
    const button = $('enrol-confirm');
    button.disabled = true;
    try {
      let r;
      try { r = await api('/v1/users/me/mfa/totp/confirm', { method: 'POST', body: { code: typed } }); } catch (err) { return; }
      if (!r.ok) {
        enrolError(r.status === 400 ? 'That code is wrong or too old: type the one the app shows now.' : `Not confirmed (${refusal(r)}).`);
        return;
      }
      setText('enrol-secret', '');
      setText('enrol-uri', '');
      $('enrol-codes').replaceChildren(...r.data.recovery_codes.map((c) => el('li', { text: c })));
      $('enrol-secret-step').hidden = true;
      $('enrol-codes-step').hidden = false;
      $('enrol-done').focus();
    } finally {
      button.disabled = false;
    }
  }

  /* The session now has a factor: its next refresh gives full tokens. */
  async function finishEnrolment() {
    $('enrol-codes').replaceChildren();
    const result = await refreshTokens();
    if (result === 'ok') { await enter(); return; }
    if (result === 'gone') endSession('Your session has ended. Please sign in again.');
    else enrolError('The service is busy or unavailable. Try again shortly.');
  }

  /* A user without an admin view is told so, and the session just opened is closed again. */
  async function deny(me) {
    try { await api('/v1/auth/logout', { method: 'POST' }); } catch (err) { /* the tokens go anyway */ }
    forgetTokens();
    setText('denied-text', `You are signed in as ${me.username}, a ${me.role} account. This page is for admin and support users only, so it shows you nothing.`);
    showView('denied');
  }

  function forgetTokens() {
    session.epoch += 1;
    session.access = null;
    session.refresh = null;
    session.me = null;
    clearTimeout(session.refreshTimer);
  }

  function stopAll() {
    for (const timer of session.timers) clearInterval(timer);
    session.timers = [];
    for (const name of Object.keys(pending)) clearTimeout(pending[name]);
    stopStream();
    feed.gen += 1;
  }

  /* Back to the sign-in form, with nothing of the old session left on the page. */
  function endSession(message) {
    if (!session.access && !session.refresh) return;
    forgetTokens();
    stopAll();
    clearData();
    delete document.body.dataset.role;
    showView('login');
    loginError(message || '');
    $('login-username').focus();
  }

  async function signOut() {
    try { await api('/v1/auth/logout', { method: 'POST' }); } catch (err) { /* signed out here anyway */ }
    endSession('');
  }

  function clearData() {
    for (const id of ['count-users', 'count-devices', 'count-online', 'count-sessions', 'count-logins', 'count-failures']) setText(id, '–');
    $('chart').replaceChildren();
    $('chart-empty').hidden = true;
    for (const id of ['users-pager', 'devices-pager']) {
      for (const node of $(id).querySelectorAll('[data-range], [data-page]')) node.textContent = '';
    }
    $('events').replaceChildren();
    $('timeline').replaceChildren();
    setText('enrol-secret', '');
    setText('enrol-uri', '');
    $('enrol-codes').replaceChildren();
    $('users-table').tBodies[0].replaceChildren();
    $('devices-table').tBodies[0].replaceChildren();
    for (const id of ['events-note', 'users-note', 'devices-note']) note(id, '');
    feed.seen.clear();
    feed.lastId = null;
    timeline.uid = null;
    names.clear();
    hourly = [];
    setLive('off');
  }

  function start() {
    users.offset = 0;
    devices.offset = 0;
    refreshCounts();
    loadUsers();
    loadDevices();
    restartEvents();
    session.timers.push(setInterval(refreshCounts, 30000));
    session.timers.push(setInterval(() => { if (!armed) { loadUsers(); loadDevices(); } }, 60000));
  }

  /* ---- counts and chart ---------------------------------------------------------------------- */

  function refreshCounts() {
    guarded(null, loadStats);
    guarded(null, loadHourly);
  }

  async function loadStats() {
    const r = await api('/v1/admin/stats');
    if (!r.ok) return;
    const s = r.data;
    setText('count-users', fmtNumber(s.users));
    setText('count-devices', fmtNumber(s.devices));
    setText('count-online', fmtNumber(s.devices_online));
    setText('count-sessions', fmtNumber(s.sessions_active));
    setText('count-logins', fmtNumber(s.logins_24h));
    setText('count-failures', fmtNumber(s.login_failures_24h));
  }

  async function loadHourly() {
    const r = await api('/v1/admin/stats/hourly?hours=24');
    if (!r.ok || !Array.isArray(r.data)) return;
    hourly = r.data;
    drawChart();
  }

  const SERIES = [
    { key: 'logins', cls: 's-logins', label: 'Logins', total: 'total-logins' },
    { key: 'login_failures', cls: 's-failures', label: 'Failures', total: 'total-failures' },
    { key: 'device_connections', cls: 's-connections', label: 'Device connections', total: 'total-connections' },
  ];
  const MIN_TOP = 4;  // the y axis reaches at least this far: a handful of events stays small, not a surge

  function niceStep(raw) {
    if (raw <= 1) return 1;
    const power = 10 ** Math.floor(Math.log10(raw));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * power >= raw && Number.isInteger(m * power)) return m * power;
    return 10 * power;
  }

  /* Where a UTC hour starts on the local clock: 14:00, or 19:30 in a zone half an hour off. */
  function hourLabel(date) {
    return `${pad2(date.getHours())}:${pad2(date.getMinutes())}`;
  }

  function svgText(attrs, text) {
    const node = svg('text', attrs);
    node.textContent = text;
    return node;
  }

  /* Counts per hour as bars from a zero baseline, one group per hour: an hour without events has no bar,
     so a quiet day is a flat line on labelled axes (and says "no data yet"), never a slope. */
  function drawChart() {
    const box = $('chart');
    const rows = hourly;
    for (const s of SERIES) setText(s.total, fmtNumber(rows.reduce((sum, row) => sum + (row[s.key] || 0), 0)));
    if (!rows.length) { box.replaceChildren(); $('chart-empty').hidden = true; return; }
    const width = Math.max(260, Math.floor(box.clientWidth || 600));
    const height = width < 520 ? 210 : 250;
    const pad = { left: 48, right: 12, top: 12, bottom: 44 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const peak = Math.max(0, ...rows.flatMap((row) => SERIES.map((s) => row[s.key] || 0)));
    const step = niceStep(Math.max(peak, MIN_TOP) / 4);
    const top = step * Math.ceil(Math.max(peak, MIN_TOP) / step);
    const n = rows.length;
    const slot = plotW / n;
    const bar = Math.max(1, Math.min(12, (slot - 3) / SERIES.length));
    const y = (v) => pad.top + plotH - (v / top) * plotH;
    const geometry = { pad, slot, width, plotH };

    const total = SERIES.map((s) => `${rows.reduce((sum, row) => sum + (row[s.key] || 0), 0)} ${s.label.toLowerCase()}`).join(', ');
    const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': `Per hour over the last 24 hours: ${total}` });
    for (let v = 0; v <= top; v += step) {
      chart.append(svg('line', { class: v ? 'grid' : 'baseline', x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v) }));
      chart.append(svgText({ class: 'axis', x: pad.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, fmtNumber(v)));
    }
    const every = width < 520 ? 6 : width < 800 ? 4 : 3;
    rows.forEach((row, i) => {
      if ((n - 1 - i) % every !== 0) return;
      chart.append(svgText({ class: 'axis', x: pad.left + slot * (i + 0.5), y: pad.top + plotH + 16, 'text-anchor': 'middle' }, hourLabel(new Date(row.hour))));
    });
    chart.append(svgText({ class: 'axis-title', x: pad.left + plotW / 2, y: height - 4, 'text-anchor': 'middle' }, 'Hour (local time)'));
    chart.append(svgText({ class: 'axis-title', x: 12, y: pad.top + plotH / 2, 'text-anchor': 'middle', transform: `rotate(-90 12 ${pad.top + plotH / 2})` }, 'Per hour'));
    // Under the bars, one column per hour catches the pointer between them; bars and column alike name their hour.
    rows.forEach((row, i) => {
      chart.append(svg('rect', { class: 'column', x: pad.left + slot * i, y: pad.top, width: slot, height: plotH, 'data-hour': i }));
    });
    rows.forEach((row, i) => {
      const start = pad.left + slot * i + (slot - bar * SERIES.length) / 2;
      SERIES.forEach((s, j) => {
        const v = row[s.key] || 0;
        if (!v) return;
        chart.append(svg('rect', { class: `bar ${s.cls}`, x: start + bar * j, y: y(v), width: Math.max(1, bar - 1), height: y(0) - y(v), 'data-hour': i, 'data-series': s.key }));
      });
    });
    const tip = svg('g', { class: 'tip', id: 'chart-tip', visibility: 'hidden' });
    chart.append(tip);
    chart.addEventListener('mouseover', (event) => {
      const target = event.target.closest('[data-hour]');
      if (target) showTip(chart, tip, Number(target.dataset.hour), geometry);
    });
    chart.addEventListener('mouseleave', () => hideTip(chart, tip));
    box.replaceChildren(chart);
    $('chart-empty').hidden = peak > 0;
    box.classList.toggle('empty', peak === 0);
  }

  /* The hovered hour: its span and each series' count, in a box beside its column. */
  function showTip(chart, tip, i, { pad, slot, width }) {
    const row = hourly[i];
    if (!row) return;
    for (const node of chart.querySelectorAll('.column.on')) node.classList.remove('on');
    chart.querySelector(`.column[data-hour="${i}"]`)?.classList.add('on');
    const start = new Date(row.hour);
    const lines = [`${hourLabel(start)}–${hourLabel(new Date(start.getTime() + 3600000))}`,
      ...SERIES.map((s) => `${s.label}: ${fmtNumber(row[s.key] || 0)}`)];
    const text = svg('text', { x: 8, y: 4 });
    lines.forEach((line, k) => {
      const span = svg('tspan', { x: 8, dy: 15, class: k ? SERIES[k - 1].cls : 'tip-hour' });
      span.textContent = line;
      text.append(span);
    });
    const back = svg('rect', { class: 'tip-box', x: 0, y: 0, rx: 6, width: 10, height: lines.length * 15 + 10 });
    tip.replaceChildren(back, text);
    tip.setAttribute('visibility', 'visible');
    const boxWidth = Math.ceil(text.getBBox().width) + 16;
    back.setAttribute('width', boxWidth);
    const right = pad.left + slot * (i + 1) + 6;
    const x = right + boxWidth <= width ? right : pad.left + slot * i - boxWidth - 6;
    tip.setAttribute('transform', `translate(${Math.max(0, x).toFixed(1)} ${pad.top})`);
  }

  function hideTip(chart, tip) {
    tip.setAttribute('visibility', 'hidden');
    for (const node of chart.querySelectorAll('.column.on')) node.classList.remove('on');
  }

  /* ---- live events ---------------------------------------------------------------------------- */

  function setLive(state) {
    const node = $('live-status');
    node.dataset.state = state;
    node.textContent = { on: 'live', retry: 'reconnecting…', off: 'offline' }[state];
  }

  function stopStream() {
    clearTimeout(feed.timer);
    if (feed.controller) feed.controller.abort();
    feed.controller = null;
  }

  /* The filters as query parameters; null when the user named does not exist. */
  async function eventFilters() {
    const params = new URLSearchParams();
    const type = $('filter-type').value;
    const user = $('filter-user').value.trim();
    const device = $('filter-device').value.trim().toUpperCase();
    if (type) params.set('type', type);
    if (device) params.set('device_uid', device);
    if (user) {
      const id = await resolveUser(user);
      if (!id) return null;
      params.set('user_id', id);
    }
    return params;
  }

  async function resolveUser(text) {
    if (USER_ID.test(text)) return text;
    const r = await api(`/v1/admin/users?${new URLSearchParams({ query: text, limit: '50' })}`);
    if (!r.ok) return null;
    for (const row of r.data) names.set(row.id, row.username);
    relabel();
    const found = r.data.find((row) => row.username.toLowerCase() === text.toLowerCase());
    return found ? found.id : null;
  }

  /* (Re)load the recent events under the current filters, then follow the stream from there. */
  async function restartEvents() {
    stopStream();
    const gen = ++feed.gen;
    $('events').replaceChildren();
    feed.seen.clear();
    note('events-note', '');
    try {
      const params = await eventFilters();
      if (gen !== feed.gen) return;
      if (params === null) {
        note('events-note', `No user named “${$('filter-user').value.trim()}”.`);
        setLive('off');
        return;
      }
      const listed = new URLSearchParams(params);
      listed.set('limit', '50');
      // The newest id of all events is where the stream resumes (Last-Event-ID), so nothing that
      // happens between this list and the stream's start is lost.
      const [recent, newest] = await Promise.all([api(`/v1/admin/events?${listed}`), api('/v1/admin/events?limit=1')]);
      if (gen !== feed.gen) return;
      if (!recent.ok) { note('events-note', `Events refused (${refusal(recent)}).`); return; }
      for (const event of recent.data.slice().reverse()) showEvent(event, false);
      const ids = [...recent.data, ...(newest.ok ? newest.data : [])].map((e) => e.id);
      feed.lastId = ids.length ? Math.max(...ids) : 0;
      if (!recent.data.length) showEmptyEvents();
      feed.backoff = 0;
      connect(gen, params.toString());
    } catch (err) {
      if (err instanceof SessionEnded || gen !== feed.gen) return;
      note('events-note', 'The server cannot be reached right now; retrying.');
      retryLater(gen, null);
    }
  }

  function showEmptyEvents() {
    $('events').replaceChildren(el('li', { class: 'empty', id: 'events-empty', text: 'No events yet. New ones appear here as they happen.' }));
  }

  async function connect(gen, query) {
    if (gen !== feed.gen || !session.access) return;
    if (query === null) { restartEvents(); return; }
    const controller = new AbortController();
    feed.controller = controller;
    const headers = { Accept: 'text/event-stream', Authorization: `Bearer ${session.access}` };
    if (feed.lastId !== null) headers['Last-Event-ID'] = String(feed.lastId);
    try {
      const res = await fetch(`/v1/admin/events/stream${query ? `?${query}` : ''}`, {
        headers, signal: controller.signal, cache: 'no-store', credentials: 'omit',
      });
      if (res.status === 401) {
        const result = await refreshTokens();
        if (result === 'gone') { endSession('Your session has ended. Please sign in again.'); return; }
        retryLater(gen, query, result === 'ok' ? 0 : undefined);
        return;
      }
      if (res.status === 403) { endSession('Your account no longer has access to this page.'); return; }
      if (!res.ok || !res.body) throw new Error(`stream answered ${res.status}`);
      setLive('on');
      note('events-note', '');
      feed.backoff = 0;
      await readFrames(res.body, gen);
    } catch (err) {
      if (controller.signal.aborted || gen !== feed.gen) return;
    }
    if (gen === feed.gen && !controller.signal.aborted) retryLater(gen, query);
  }

  function retryLater(gen, query, delay) {
    if (gen !== feed.gen) return;
    setLive('retry');
    const wait = delay ?? Math.min(30000, feed.retryMs * 2 ** feed.backoff);
    feed.backoff += 1;
    clearTimeout(feed.timer);
    feed.timer = setTimeout(() => connect(gen, query), wait);
  }

  /* Server-Sent Events read by hand (fetch can send the Authorization header; the browser's own SSE client cannot):
     frames end at a blank line; fields are id, event, data, retry; lines starting with ':' are comments. */
  async function readFrames(body, gen) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done || gen !== feed.gen) return;
      // CRLF and CR end lines too; a CR at the very end may be the first half of a CRLF.
      buffer = (buffer + value).replace(/\r\n|\r(?=[^\n])/g, '\n');
      if (buffer.length > 1048576) throw new Error('an event frame is too large');
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const frame = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        dispatchFrame(frame);
      }
    }
  }

  function dispatchFrame(frame) {
    const data = [];
    for (const line of frame.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'data') data.push(value);
      else if (field === 'retry' && /^\d+$/.test(value)) feed.retryMs = Number(value);
    }
    if (!data.length) return;
    let event;
    try { event = JSON.parse(data.join('\n')); } catch (err) { return; }
    if (event && typeof event === 'object') onLiveEvent(event);
  }

  function onLiveEvent(event) {
    if (event.id > 0) {
      if (feed.seen.has(event.id)) return;
      // Only ever forward: a batch summary carries id 0, and events of two processes may interleave.
      feed.lastId = Math.max(feed.lastId || 0, event.id);
    }
    const empty = $('events-empty');
    if (empty) empty.remove();
    showEvent(event, true);
    if (timeline.uid && event.device_uid === timeline.uid) $('timeline').prepend(timelineItem(event));
    debounce('counts', 1500, refreshCounts);
    if (String(event.type).startsWith('device_')) debounce('devices', 2000, () => { if (!armed) loadDevices(); });
    if (/^(user_|login_|logout|session_)/.test(String(event.type))) debounce('users', 2000, () => { if (!armed) loadUsers(); });
  }

  function typeClass(type) {
    if (BAD_TYPES.has(type)) return 't-bad';
    if (type === 'device_connected' || type === 'device_enabled') return 't-device';
    if (type === 'login_succeeded') return 't-good';
    return '';
  }

  function actorText(event) {
    if (event.actor_type === 'system') return 'system';
    if (event.actor_type === 'device') return event.actor_id && event.actor_id !== event.device_uid ? `device ${event.actor_id}` : 'device';
    if (!event.actor_id) return event.detail && event.detail.username ? `unknown user “${event.detail.username}”` : 'unknown user';
    return names.get(event.actor_id) || (event.detail && event.type.startsWith('login_') && event.detail.username) || event.actor_id;
  }

  function detailText(detail) {
    if (!detail || typeof detail !== 'object') return '';
    const parts = Object.entries(detail).map(([key, value]) => `${key}: ${typeof value === 'object' ? JSON.stringify(value) : value}`);
    const text = parts.join(' · ');
    return text.length > 300 ? `${text.slice(0, 300)}…` : text;
  }

  function whoEl(event) {
    const known = event.actor_type === 'user' && event.actor_id;
    return el('span', { class: 'who', data: known ? { actor: event.actor_id } : {}, text: actorText(event) });
  }

  /* Events arrive before the user list that names their actors: put the names in once it has come. */
  function relabel() {
    for (const node of document.querySelectorAll('.who[data-actor]')) {
      const name = names.get(node.dataset.actor);
      if (name && node.textContent !== name) node.textContent = name;
    }
  }

  function deviceButton(uid) {
    return el('button', { type: 'button', class: 'link', title: 'Show this device’s timeline', text: uid, on: { click: () => showTimeline(uid, true) } });
  }

  function showEvent(event, fresh) {
    if (event.id > 0) feed.seen.add(event.id);
    const item = el('li', { class: `event${fresh ? ' fresh' : ''}`, data: { type: event.type, id: event.id } },
      timeEl(event.ts),
      el('div', { class: 'what' },
        el('span', { class: `type ${typeClass(event.type)}`, text: event.type }),
        whoEl(event),
        event.device_uid ? deviceButton(event.device_uid) : null,
        event.ip ? el('span', { class: 'sub', text: event.ip }) : null),
      detailText(event.detail) ? el('div', { class: 'detail', text: detailText(event.detail) }) : null);
    const list = $('events');
    list.prepend(item);
    while (list.children.length > MAX_EVENTS) {
      const last = list.lastElementChild;
      feed.seen.delete(Number(last.dataset.id));
      last.remove();
    }
  }

  /* ---- tables --------------------------------------------------------------------------------- */

  function cell(label, ...children) {
    return el('td', { data: { label } }, ...children);
  }

  /* Rows a–b of the total (X-Total-Count), page n of m, and which steps lead anywhere. */
  function showPager(id, state) {
    const box = $(id);
    const pages = Math.max(1, Math.ceil(state.total / state.size));
    const first = state.offset + 1;
    const last = Math.min(state.offset + state.size, state.total);
    box.querySelector('[data-range]').textContent = state.total ? `${fmtNumber(first)}–${fmtNumber(last)} of ${fmtNumber(state.total)}` : 'none';
    box.querySelector('[data-page]').textContent = `Page ${fmtNumber(Math.floor(state.offset / state.size) + 1)} of ${fmtNumber(pages)}`;
    for (const button of box.querySelectorAll('[data-step]')) {
      const back = button.dataset.step === 'first' || button.dataset.step === 'prev';
      button.disabled = back ? state.offset === 0 : state.offset + state.size >= state.total;
    }
  }

  function wirePager(id, state, load) {
    const box = $(id);
    box.addEventListener('click', (event) => {
      const button = event.target.closest('[data-step]');
      if (!button || button.disabled) return;
      const lastPage = Math.max(0, Math.ceil(state.total / state.size) - 1) * state.size;
      state.offset = {
        first: 0,
        prev: Math.max(0, state.offset - state.size),
        next: Math.min(lastPage, state.offset + state.size),
        last: lastPage,
      }[button.dataset.step];
      load();
    });
    box.querySelector('[data-size]').addEventListener('change', (event) => {
      state.size = PAGE_SIZES.includes(Number(event.target.value)) ? Number(event.target.value) : PAGE_SIZES[0];
      state.offset = Math.floor(state.offset / state.size) * state.size;  // the page that holds the first row shown
      load();
    });
  }

  /* Ask for one page of a table; null when a newer request has been made meanwhile. A page past the end
     (rows gone since, a smaller total) is asked again as the last page. */
  async function fetchPage(path, state, filters) {
    const seq = ++state.seq;
    for (let attempt = 0; ; attempt += 1) {
      const params = new URLSearchParams({ limit: String(state.size), offset: String(state.offset) });
      for (const [name, value] of Object.entries(filters)) if (value) params.set(name, value);
      const r = await api(`${path}?${params}`);
      if (seq !== state.seq) return null;
      if (r.ok && !r.data.length && r.total > 0 && state.offset > 0 && attempt === 0) {
        state.offset = Math.floor((r.total - 1) / state.size) * state.size;
        continue;
      }
      if (r.ok) state.total = r.total;
      return r;
    }
  }

  /* Disabling takes a second click within a few seconds: it ends every session of the user at once.
     The armed button keeps a short label (the width of its cell does not change) and names its target
     in its tooltip and to screen readers. */
  function arm(button, target) {
    disarm();
    armed = button;
    button.dataset.label = button.textContent;
    button.textContent = 'Confirm';
    button.title = `Click again within 5 s to disable ${target}`;
    button.setAttribute('aria-label', `Confirm: disable ${target}`);
    button.classList.add('confirm');
    button.dataset.timer = String(setTimeout(disarm, 5000));
  }

  function disarm() {
    if (!armed) return;
    clearTimeout(Number(armed.dataset.timer));
    armed.textContent = armed.dataset.label;
    armed.removeAttribute('title');
    armed.removeAttribute('aria-label');
    armed.classList.remove('confirm');
    armed = null;
  }

  function isAdmin() { return session.me && session.me.role === 'admin'; }

  function emptyRow(columns, text) {
    return el('tr', {}, el('td', { class: 'empty empty-row', colspan: columns, text }));
  }

  function loadUsers() {
    return guarded('users-note', async () => {
      const r = await fetchPage('/v1/admin/users', users, { query: users.query, role: users.role });
      if (!r) return;
      if (!r.ok) { note('users-note', `Users refused (${refusal(r)}).`); return; }
      note('users-note', '');
      const rows = r.data.map((user) => {
        names.set(user.id, user.username);
        let action = null;
        // Support reads everything and changes nothing: it gets no button at all (and the API says 403).
        if (isAdmin() && user.id !== session.me.id) {
          action = el('button', {
            type: 'button', class: user.disabled ? 'ghost small' : 'danger small',
            data: { action: user.disabled ? 'enable' : 'disable', user: user.username },
            text: user.disabled ? 'Enable' : 'Disable',
            on: { click: (event) => setUserDisabled(user, event.currentTarget) },
          });
        }
        return el('tr', { data: { userId: user.id, username: user.username } },
          cell('User', el('strong', { text: user.username }), el('span', { class: 'sub', text: user.email || user.id })),
          cell('Role', el('span', { class: 'pill off', text: user.role })),
          cell('Last login', timeEl(user.last_login_at)),
          cell('Sessions', String(user.active_sessions)),
          cell('Status', el('span', { class: `pill ${user.disabled ? 'disabled' : 'active'}`, text: user.disabled ? 'disabled' : 'active' })),
          el('td', { class: 'actions' }, action));
      });
      if (!rows.length) rows.push(emptyRow(6, users.query || users.role ? 'No user matches.' : 'No users.'));
      disarm();
      $('users-table').tBodies[0].replaceChildren(...rows);
      showPager('users-pager', users);
      relabel();
    });
  }

  async function setUserDisabled(user, button) {
    if (!user.disabled && armed !== button) { arm(button, user.username); return; }
    disarm();
    button.disabled = true;
    await guarded('users-note', async () => {
      const r = await api(`/v1/admin/users/${encodeURIComponent(user.id)}`, { method: 'PATCH', body: { disabled: !user.disabled } });
      if (!r.ok) note('users-note', `Refused (${refusal(r)}).`);
    });
    await loadUsers();
    refreshCounts();
  }

  /* Online: since when it is connected. Offline: when it was last seen (or never). */
  function presenceCell(device) {
    const pill = el('span', { class: `pill ${device.online ? 'on' : 'off'}`, text: device.online ? 'online' : 'offline' });
    let since = null;
    if (device.online && device.connected_at) since = el('span', { class: 'sub', data: { presence: 'since' } }, 'since ', timeEl(device.connected_at));
    else if (!device.online) {
      since = device.last_seen
        ? el('span', { class: 'sub', data: { presence: 'last-seen' } }, 'last seen ', timeEl(device.last_seen))
        : el('span', { class: 'sub', data: { presence: 'never' }, text: 'never seen' });
    }
    return cell('Presence', pill, since);
  }

  function deviceRow(device) {
    let action = null;
    if (isAdmin()) {
      action = el('button', {
        type: 'button', class: device.disabled ? 'ghost small' : 'danger small',
        data: { action: device.disabled ? 'enable' : 'disable', uid: device.uid },
        text: device.disabled ? 'Enable' : 'Disable',
        on: { click: (event) => setDeviceDisabled(device, event.currentTarget) },
      });
    }
    const owner = device.owner_username || (device.owner_id ? names.get(device.owner_id) || device.owner_id : null);
    return el('tr', { class: device.uid === timeline.uid ? 'selected' : '', data: { uid: device.uid } },
      cell('Device', deviceButton(device.uid), el('span', { class: 'sub', text: [device.name, device.model].filter(Boolean).join(' · ') })),
      presenceCell(device),
      cell('Network', el('span', { class: 'mono', text: device.ip || '—' }), device.region ? el('span', { class: 'sub', text: device.region }) : null),
      cell('Owner', owner || el('span', { class: 'sub', text: 'unbound' })),
      cell('Status', el('span', { class: `pill ${device.disabled ? 'disabled' : 'active'}`, text: device.disabled ? 'disabled' : 'enabled' })),
      el('td', { class: 'actions' }, action));
  }

  function loadDevices() {
    return guarded('devices-note', async () => {
      const r = await fetchPage('/v1/admin/devices', devices, { query: devices.query, online: devices.online });
      if (!r) return;
      if (r.status === 404) { note('devices-note', 'The device manager does not answer at this address.'); return; }
      if (!r.ok) { note('devices-note', `Devices refused (${refusal(r)}).`); return; }
      note('devices-note', '');
      const rows = r.data.map(deviceRow);
      if (!rows.length) rows.push(emptyRow(6, devices.query || devices.online ? 'No device matches.' : 'No devices.'));
      disarm();
      $('devices-table').tBodies[0].replaceChildren(...rows);
      showPager('devices-pager', devices);
    });
  }

  async function setDeviceDisabled(device, button) {
    if (!device.disabled && armed !== button) { arm(button, device.uid); return; }
    disarm();
    button.disabled = true;
    const action = device.disabled ? 'enable' : 'disable';
    await guarded('devices-note', async () => {
      const r = await api(`/v1/admin/devices/${encodeURIComponent(device.uid)}/${action}`, { method: 'POST' });
      if (!r.ok) note('devices-note', `Refused (${refusal(r)}).`);
    });
    await loadDevices();
  }

  /* ---- one device's timeline ------------------------------------------------------------------ */

  function timelineItem(event) {
    return el('li', { class: typeClass(event.type), data: { type: event.type } },
      timeEl(event.ts),
      el('span', { class: `type ${typeClass(event.type)}`, text: event.type }), ' ',
      whoEl(event),
      event.ip ? el('span', { class: 'sub', text: event.ip }) : null,
      detailText(event.detail) ? el('div', { class: 'detail', text: detailText(event.detail) }) : null);
  }

  async function showTimeline(uid, scroll) {
    timeline.uid = uid;
    setText('timeline-title', `Timeline of ${uid}`);
    $('timeline-hint').hidden = true;
    $('timeline-refresh').hidden = false;
    for (const row of $('devices-table').tBodies[0].rows) row.classList.toggle('selected', row.dataset.uid === uid);
    if (scroll) $('timeline-card').scrollIntoView({ block: 'nearest' });
    await guarded(null, async () => {
      const r = await api(`/v1/admin/events?${new URLSearchParams({ device_uid: uid, limit: '100' })}`);
      if (timeline.uid !== uid) return;
      const list = $('timeline');
      if (!r.ok) { list.replaceChildren(el('li', { class: 'empty', text: `Refused (${refusal(r)}).` })); return; }
      const items = r.data.map(timelineItem);
      list.replaceChildren(...(items.length ? items : [el('li', { class: 'empty', text: 'No events for this device yet.' })]));
    });
  }

  /* ---- wiring --------------------------------------------------------------------------------- */

  function init() {
    const select = $('filter-type');
    for (const type of EVENT_TYPES) select.append(el('option', { value: type, text: type }));
    $('login-form').addEventListener('submit', signIn);
    $('login-restart').addEventListener('click', () => restartLogin(''));
    $('enrol-form').addEventListener('submit', confirmEnrolment);
    $('enrol-done').addEventListener('click', finishEnrolment);
    $('enrol-cancel').addEventListener('click', signOut);
    $('logout').addEventListener('click', signOut);
    $('denied-back').addEventListener('click', () => { showView('login'); loginError(''); $('login-username').focus(); });
    $('event-filters').addEventListener('submit', (event) => { event.preventDefault(); restartEvents(); });
    select.addEventListener('change', restartEvents);
    for (const id of ['filter-user', 'filter-device']) {
      $(id).addEventListener('input', () => debounce('filters', 500, restartEvents));
    }
    $('events-clear').addEventListener('click', () => { $('events').replaceChildren(); });
    $('user-search').addEventListener('input', (event) => {
      debounce('user-search', 300, () => { users.query = event.target.value.trim(); users.offset = 0; loadUsers(); });
    });
    $('user-role').addEventListener('change', (event) => { users.role = event.target.value; users.offset = 0; loadUsers(); });
    $('device-search').addEventListener('input', (event) => {
      debounce('device-search', 300, () => { devices.query = event.target.value.trim(); devices.offset = 0; loadDevices(); });
    });
    $('device-online').addEventListener('change', (event) => { devices.online = event.target.value; devices.offset = 0; loadDevices(); });
    wirePager('users-pager', users, loadUsers);
    wirePager('devices-pager', devices, loadDevices);
    $('timeline-refresh').addEventListener('click', () => { if (timeline.uid) showTimeline(timeline.uid, false); });
    let lastWidth = 0;
    window.addEventListener('resize', () => debounce('resize', 150, () => {
      const width = $('chart').clientWidth;
      if (width !== lastWidth && hourly.length) { lastWidth = width; drawChart(); }
    }));
    showView('login');
    $('login-username').focus();
  }

  init();
})();
