/* The devices panel: the table, searched and paged by the server, presence as an operator reads it, and
   admin's disable and enable. */
import { $, debounce, el, note, timeEl } from './dom.js';
import { api, guarded, isAdmin, refusal } from './api.js';
import { clearPager, pageState, showPager, wirePager } from './pager.js';
import { arm, cell, disarm, emptyRow, fetchPage, isArmed, toggleButton } from './tables.js';
import { deviceButton, shownDevice } from './timeline.js';
import { names } from './users.js';

const devices = pageState({ query: '', online: '' });

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
  const action = isAdmin()
    ? toggleButton(device.disabled, { uid: device.uid }, (button) => setDeviceDisabled(device, button))
    : null;
  const owner = device.owner_username || (device.owner_id ? names.get(device.owner_id) || device.owner_id : null);
  return el('tr', { class: device.uid === shownDevice() ? 'selected' : '', data: { uid: device.uid } },
    cell('Device', deviceButton(device.uid), el('span', { class: 'sub', text: [device.name, device.model].filter(Boolean).join(' · ') })),
    presenceCell(device),
    cell('Network', el('span', { class: 'mono', text: device.ip || '—' }), device.region ? el('span', { class: 'sub', text: device.region }) : null),
    cell('Owner', owner || el('span', { class: 'sub', text: 'unbound' })),
    cell('Status', el('span', { class: `pill ${device.disabled ? 'disabled' : 'active'}`, text: device.disabled ? 'disabled' : 'enabled' })),
    el('td', { class: 'actions' }, action));
}

export function loadDevices() {
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
  if (!device.disabled && !isArmed(button)) { arm(button, device.uid); return; }
  disarm();
  button.disabled = true;
  const action = device.disabled ? 'enable' : 'disable';
  await guarded('devices-note', async () => {
    const r = await api(`/v1/admin/devices/${encodeURIComponent(device.uid)}/${action}`, { method: 'POST' });
    if (!r.ok) note('devices-note', `Refused (${refusal(r)}).`);
  });
  await loadDevices();
}

/* Back to the first page, as a new session starts. */
export function rewindDevices() { devices.offset = 0; }

export function clearDevices() {
  $('devices-table').tBodies[0].replaceChildren();
  clearPager('devices-pager');
  note('devices-note', '');
}

export function initDevices() {
  $('device-search').addEventListener('input', (event) => {
    debounce('device-search', 300, () => { devices.query = event.target.value.trim(); devices.offset = 0; loadDevices(); });
  });
  $('device-online').addEventListener('change', (event) => { devices.online = event.target.value; devices.offset = 0; loadDevices(); });
  wirePager('devices-pager', 'Devices', devices, loadDevices);
}
