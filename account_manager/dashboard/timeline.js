/* One device's timeline: its events, newest first, for the device chosen in the devices table or in an event. */
import { $, el, setText, timeEl } from './dom.js';
import { api, guarded, refusal } from './api.js';
import { detailText, typeClass } from './labels.js';
import { whoEl } from './users.js';

let shown = null;  // the UID of the device whose timeline is shown

export function shownDevice() { return shown; }

/* A device's UID as a button that shows its timeline. */
export function deviceButton(uid) {
  return el('button', { type: 'button', class: 'link', title: 'Show this device’s timeline', text: uid, on: { click: () => showTimeline(uid, true) } });
}

function timelineItem(event) {
  return el('li', { class: typeClass(event.type), data: { type: event.type } },
    timeEl(event.ts),
    el('span', { class: `type ${typeClass(event.type)}`, text: event.type }), ' ',
    whoEl(event),
    event.ip ? el('span', { class: 'sub', text: event.ip }) : null,
    detailText(event.detail) ? el('div', { class: 'detail', text: detailText(event.detail) }) : null);
}

/* A live event on top of the timeline, when it is of the device shown. */
export function addToTimeline(event) {
  if (shown && event.device_uid === shown) $('timeline').prepend(timelineItem(event));
}

async function showTimeline(uid, scroll) {
  shown = uid;
  setText('timeline-title', `Timeline of ${uid}`);
  $('timeline-hint').hidden = true;
  $('timeline-refresh').hidden = false;
  for (const row of $('devices-table').tBodies[0].rows) row.classList.toggle('selected', row.dataset.uid === uid);
  if (scroll) $('timeline-card').scrollIntoView({ block: 'nearest' });
  await guarded(null, async () => {
    const r = await api(`/v1/admin/events?${new URLSearchParams({ device_uid: uid, limit: '100' })}`);
    if (shown !== uid) return;
    const list = $('timeline');
    if (!r.ok) { list.replaceChildren(el('li', { class: 'empty', text: `Refused (${refusal(r)}).` })); return; }
    const items = r.data.map(timelineItem);
    list.replaceChildren(...(items.length ? items : [el('li', { class: 'empty', text: 'No events for this device yet.' })]));
  });
}

export function clearTimeline() {
  $('timeline').replaceChildren();
  shown = null;
}

export function initTimeline() {
  $('timeline-refresh').addEventListener('click', () => { if (shown) showTimeline(shown, false); });
}
