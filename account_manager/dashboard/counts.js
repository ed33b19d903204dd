/* The counts at the top of the page (users, devices, sessions, logins and failures of the last day),
   reloaded with the chart below them. */
import { setText } from './dom.js';
import { api, guarded } from './api.js';
import { loadHourly } from './chart.js';
import { fmtNumber } from './format.js';

const COUNTS = {
  'count-users': 'users',
  'count-devices': 'devices',
  'count-online': 'devices_online',
  'count-sessions': 'sessions_active',
  'count-logins': 'logins_24h',
  'count-failures': 'login_failures_24h',
};

export function refreshCounts() {
  guarded(null, loadStats);
  guarded(null, loadHourly);
}

async function loadStats() {
  const r = await api('/v1/admin/stats');
  if (!r.ok) return;
  for (const [id, key] of Object.entries(COUNTS)) setText(id, fmtNumber(r.data[key]));
}

export function clearCounts() {
  for (const id of Object.keys(COUNTS)) setText(id, '–');
}
