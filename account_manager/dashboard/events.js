/* The live events panel: the recent events under the filters, then the stream from where they end,
   reconnecting with backoff; each event also reloads what it changes (counts, tables, the timeline). */
import { $, debounce, el, note, timeEl } from './dom.js';
import { SESSION_OVER, SessionEnded, api, endSession, refreshTokens, refusal, session } from './api.js';
import { refreshCounts } from './counts.js';
import { loadDevices } from './devices.js';
import { detailText, typeClass } from './labels.js';
import { parseFrame, splitFrames } from './sse.js';
import { anyArmed } from './tables.js';
import { addToTimeline, deviceButton } from './timeline.js';
import { loadUsers, names, relabel, whoEl } from './users.js';

const MAX_EVENTS = 200;  // events kept on screen
const USER_ID = /^[a-z0-9]{20}$/;
const feed = { controller: null, gen: 0, lastId: null, retryMs: 2000, backoff: 0, timer: 0, seen: new Set() };

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

function showEmptyEvents() {
  $('events').replaceChildren(el('li', { class: 'empty', id: 'events-empty', text: 'No events yet. New ones appear here as they happen.' }));
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
export async function restartEvents() {
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
      if (result === 'gone') { endSession(SESSION_OVER); return; }
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

async function readFrames(body, gen) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done || gen !== feed.gen) return;
    const { frames, rest } = splitFrames(buffer, value);
    buffer = rest;
    for (const frame of frames) dispatchFrame(frame);
  }
}

function dispatchFrame(frame) {
  const { data, retry } = parseFrame(frame);
  if (retry !== null) feed.retryMs = retry;
  if (data === null) return;
  let event;
  try { event = JSON.parse(data); } catch (err) { return; }
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
  addToTimeline(event);
  debounce('counts', 1500, refreshCounts);
  if (String(event.type).startsWith('device_')) debounce('devices', 2000, () => { if (!anyArmed()) loadDevices(); });
  if (/^(user_|login_|logout|session_)/.test(String(event.type))) debounce('users', 2000, () => { if (!anyArmed()) loadUsers(); });
}

/* No more stream, and no late answer of the old one draws anything. */
export function stopEvents() {
  stopStream();
  feed.gen += 1;
}

export function clearEvents() {
  $('events').replaceChildren();
  note('events-note', '');
  feed.seen.clear();
  feed.lastId = null;
  setLive('off');
}

export function initEvents() {
  // The types come from the server's own list (shared.models.EventType), written into the page it serves.
  const types = (document.querySelector('meta[name="handshake-event-types"]')?.content || '').split(',').filter(Boolean);
  const select = $('filter-type');
  for (const type of types) select.append(el('option', { value: type, text: type }));
  $('event-filters').addEventListener('submit', (event) => { event.preventDefault(); restartEvents(); });
  select.addEventListener('change', restartEvents);
  for (const id of ['filter-user', 'filter-device']) {
    $(id).addEventListener('input', () => debounce('filters', 500, restartEvents));
  }
  $('events-clear').addEventListener('click', () => { $('events').replaceChildren(); });
}
