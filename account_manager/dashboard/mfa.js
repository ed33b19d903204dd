/* Enrolling a second factor: an admin or support account without one gets tokens for that only (SPEC §12),
   and this page walks it through (the secret, a first code, the recovery codes). */
import { $, el, note, setText } from './dom.js';
import { SESSION_OVER, api, endSession, refreshTokens, refusal } from './api.js';
import { showView, signOut } from './login.js';

let onEnrolled = async () => {};  // what follows an enrolment (main.js says)

function enrolError(message) { note('enrol-error', message); }

export async function startEnrolment(me) {
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
  if (result === 'ok') { await onEnrolled(); return; }
  if (result === 'gone') endSession(SESSION_OVER);
  else enrolError('The service is busy or unavailable. Try again shortly.');
}

/* The secret and the recovery codes leave the page with the session. */
export function clearEnrolment() {
  setText('enrol-secret', '');
  setText('enrol-uri', '');
  $('enrol-codes').replaceChildren();
}

export function initEnrolment({ enrolled }) {
  onEnrolled = enrolled;
  $('enrol-form').addEventListener('submit', confirmEnrolment);
  $('enrol-done').addEventListener('click', finishEnrolment);
  $('enrol-cancel').addEventListener('click', signOut);
}
