/* What the users' and the devices' tables share: a page fetched from the server, their cells, and the
   disable button that waits for a confirming second click. */
import { el } from './dom.js';
import { api } from './api.js';
import { lastOffset } from './pager.js';

let armed = null;  // a button waiting for its confirming second click

/* Ask for one page of a table; null when a newer request has been made meanwhile. A page past the end
   (rows gone since, a smaller total) is asked again as the last page. */
export async function fetchPage(path, state, filters) {
  const seq = ++state.seq;
  for (let attempt = 0; ; attempt += 1) {
    const params = new URLSearchParams({ limit: String(state.size), offset: String(state.offset) });
    for (const [name, value] of Object.entries(filters)) if (value) params.set(name, value);
    const r = await api(`${path}?${params}`);
    if (seq !== state.seq) return null;
    if (r.ok && !r.data.length && r.total > 0 && state.offset > 0 && attempt === 0) {
      state.offset = lastOffset(r.total, state.size);
      continue;
    }
    if (r.ok) state.total = r.total;
    return r;
  }
}

export function cell(label, ...children) {
  return el('td', { data: { label } }, ...children);
}

export function emptyRow(columns, text) {
  return el('tr', {}, el('td', { class: 'empty empty-row', colspan: columns, text }));
}

/* The Enable / Disable button of a row; admins only (support reads everything and changes nothing: it
   gets no button at all, and the API says 403). */
export function toggleButton(disabled, data, onClick) {
  return el('button', {
    type: 'button', class: disabled ? 'ghost small' : 'danger small',
    data: { action: disabled ? 'enable' : 'disable', ...data },
    text: disabled ? 'Enable' : 'Disable',
    on: { click: (event) => onClick(event.currentTarget) },
  });
}

/* Disabling takes a second click within a few seconds: it ends every session of the user at once.
   The armed button keeps a short label (the width of its cell does not change) and names its target
   in its tooltip and to screen readers. */
export function arm(button, target) {
  disarm();
  armed = button;
  button.dataset.label = button.textContent;
  button.textContent = 'Confirm';
  button.title = `Click again within 5 s to disable ${target}`;
  button.setAttribute('aria-label', `Confirm: disable ${target}`);
  button.classList.add('confirm');
  button.dataset.timer = String(setTimeout(disarm, 5000));
}

export function disarm() {
  if (!armed) return;
  clearTimeout(Number(armed.dataset.timer));
  armed.textContent = armed.dataset.label;
  armed.removeAttribute('title');
  armed.removeAttribute('aria-label');
  armed.classList.remove('confirm');
  armed = null;
}

export function isArmed(button) { return armed === button; }

/* While a button waits for its second click, the tables are not redrawn under the pointer. */
export function anyArmed() { return armed !== null; }
