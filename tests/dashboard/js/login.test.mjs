// What the sign-in form sends and says (account_manager/dashboard/login.js).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { codeBody, signInRefusal } from '../../../account_manager/dashboard/login.js';

test('digits are a TOTP code, spaces removed; anything else is a recovery code as typed', () => {
  assert.deepEqual(codeBody('t', '123 456'), { mfa_token: 't', code: '123456' });
  assert.deepEqual(codeBody('t', '123456'), { mfa_token: 't', code: '123456' });
  assert.deepEqual(codeBody('t', 'abcd-efgh'), { mfa_token: 't', recovery_code: 'abcd-efgh' });
});

test('a refusal is told by its error code first, then by its status', () => {
  const cases = [
    ['invalid_code', 401, null, 'That code is wrong, too old or already used.'],
    ['validation_error', 422, null, 'That is not a code: six digits, or a recovery code as it was shown.'],
    ['invalid_credentials', 401, null, 'Wrong username or password.'],
    ['', 403, null, 'This account is disabled.'],
    ['too_many_attempts', 429, '60', 'Too many attempts. Try again in 60 s.'],
    ['too_many_attempts', 429, null, 'Too many attempts. Try again later.'],
    ['', 503, null, 'The service is busy or unavailable. Try again shortly.'],
    ['', 500, null, 'Sign-in failed (500).'],
  ];
  for (const [code, status, retry, text] of cases) assert.equal(signInRefusal(code, status, retry), text, `${code} ${status}`);
});
