/* Handshake admin dashboard (SPEC §8): the page's entry module, loaded with <script type="module">, which
 * wires the panels together. Everything on the page comes from the /v1/admin API of this origin; the
 * tokens stay in api.js's memory. */
import { $, cancelDebounced, setText } from './dom.js';
import { SessionEnded, api, forgetTokens, session, whenSessionEnds } from './api.js';
import { clearChart, initChart } from './chart.js';
import { clearCounts, refreshCounts } from './counts.js';
import { clearDevices, initDevices, loadDevices, rewindDevices } from './devices.js';
import { clearEvents, initEvents, restartEvents, stopEvents } from './events.js';
import { deny, initLogin, loginError, showView } from './login.js';
import { clearEnrolment, initEnrolment, startEnrolment } from './mfa.js';
import { anyArmed } from './tables.js';
import { clearTimeline, initTimeline } from './timeline.js';
import { clearUsers, initUsers, loadUsers, names, rewindUsers } from './users.js';

const READERS = new Set(['admin', 'support']);
let intervals = [];

/* After the sign-in: the dashboard for admin and support, the enrolment for those still without a second
   factor, and a refusal for everyone else. */
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

function start() {
  rewindUsers();
  rewindDevices();
  refreshCounts();
  loadUsers();
  loadDevices();
  restartEvents();
  intervals.push(setInterval(refreshCounts, 30000));
  intervals.push(setInterval(() => { if (!anyArmed()) { loadUsers(); loadDevices(); } }, 60000));
}

function stopAll() {
  for (const timer of intervals) clearInterval(timer);
  intervals = [];
  cancelDebounced();
  stopEvents();
}

/* Nothing of the old session is left on the page. */
function clearData() {
  clearCounts();
  clearChart();
  clearEvents();
  clearTimeline();
  clearEnrolment();
  clearUsers();
  clearDevices();
}

function init() {
  whenSessionEnds((message) => {
    stopAll();
    clearData();
    delete document.body.dataset.role;
    showView('login');
    loginError(message);
    $('login-username').focus();
  });
  initLogin({ signedIn: enter });
  initEnrolment({ enrolled: enter });
  initEvents();
  initUsers();
  initDevices();
  initTimeline();
  initChart();
  showView('login');
  $('login-username').focus();
}

init();
