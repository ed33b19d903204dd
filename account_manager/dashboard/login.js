/* Signing in and out: the password step, then (for an account with a second factor) the code step, and
   the page a user without an admin view is shown instead. The server's mfa_token of the first step is
   kept in this module only, like the tokens. */
import { $, note, setText } from './dom.js';
import { api, endSession, forgetTokens, keepTokens, postJson } from './api.js';

const login = { mfaToken: null };
let onSignedIn = async () => {};  // what follows a sign-in (main.js says)

export function showView(name) {
  $('login-view').hidden = name !== 'login';
  $('dashboard-view').hidden = name !== 'dashboard';
  $('denied-view').hidden = name !== 'denied';
  $('enrol-view').hidden = name !== 'enrol';
  $('whoami').hidden = name !== 'dashboard';
}

export function loginError(message) { note('login-error', message); }

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

/* The code step's body: digits (spaces allowed) are a TOTP code, anything else a recovery code. */
export function codeBody(mfaToken, typed) {
  return /^[0-9 ]+$/.test(typed)
    ? { mfa_token: mfaToken, code: typed.replace(/ /g, '') }
    : { mfa_token: mfaToken, recovery_code: typed };
}

/* What a refused sign-in tells the user, from the error code and the status of the answer. */
export function signInRefusal(code, status, retryAfter) {
  return {
    invalid_code: 'That code is wrong, too old or already used.',
    validation_error: 'That is not a code: six digits, or a recovery code as it was shown.',
  }[code] || {
    401: 'Wrong username or password.',
    403: 'This account is disabled.',
    429: `Too many attempts. Try again${retryAfter ? ` in ${retryAfter} s` : ' later'}.`,
    503: 'The service is busy or unavailable. Try again shortly.',
  }[status] || `Sign-in failed (${status}).`;
}

/* The path and body of the step the form is at; null (and a message) when a field is empty. */
function stepRequest() {
  if (login.mfaToken) {
    const typed = $('login-code').value.trim();
    if (!typed) { loginError('Enter the code.'); return null; }
    return ['/v1/auth/mfa', codeBody(login.mfaToken, typed)];
  }
  const username = $('login-username').value.trim();
  const password = $('login-password').value;
  if (!username || !password) { loginError('Enter your username and password.'); return null; }
  return ['/v1/auth/login', { username, password }];
}

async function signIn(event) {
  event.preventDefault();
  loginError('');
  const request = stepRequest();
  if (!request) return;
  const button = $('login-submit');
  button.disabled = true;
  try {
    let res;
    let data = null;
    try {
      res = await postJson(...request);
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
      loginError(signInRefusal(code, res.status, res.headers.get('Retry-After')));
      return;
    }
    login.mfaToken = null;
    showCodeStep(false);
    $('login-password').value = '';
    keepTokens(data);
    await onSignedIn();
  } finally {
    button.disabled = false;
  }
}

/* A user without an admin view is told so, and the session just opened is closed again. */
export async function deny(me) {
  try { await api('/v1/auth/logout', { method: 'POST' }); } catch (err) { /* the tokens go anyway */ }
  forgetTokens();
  setText('denied-text', `You are signed in as ${me.username}, a ${me.role} account. This page is for admin and support users only, so it shows you nothing.`);
  showView('denied');
}

export async function signOut() {
  try { await api('/v1/auth/logout', { method: 'POST' }); } catch (err) { /* signed out here anyway */ }
  endSession('');
}

export function initLogin({ signedIn }) {
  onSignedIn = signedIn;
  $('login-form').addEventListener('submit', signIn);
  $('login-restart').addEventListener('click', () => restartLogin(''));
  $('logout').addEventListener('click', signOut);
  $('denied-back').addEventListener('click', () => { showView('login'); loginError(''); $('login-username').focus(); });
}
