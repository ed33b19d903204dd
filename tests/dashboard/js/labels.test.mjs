// How an event is told (account_manager/dashboard/labels.js): its colour, its actor and its detail.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { actorText, detailText, typeClass } from '../../../account_manager/dashboard/labels.js';

test('failures and refusals are bad, connections and enables device, successful logins good', () => {
  const cases = [
    ['login_failed', 't-bad'], ['acl_denied', 't-bad'], ['mfa_failed', 't-bad'], ['device_disabled', 't-bad'],
    ['device_connected', 't-device'], ['device_enabled', 't-device'], ['login_succeeded', 't-good'],
    ['device_disconnected', ''], ['user_registered', ''], ['anything_new', ''],
  ];
  for (const [type, cls] of cases) assert.equal(typeClass(type), cls, type);
});

test('the actor is a username when one is known, else what the event tells', () => {
  const names = new Map([['u1', 'alice']]);
  const cases = [
    [{ actor_type: 'system' }, 'system'],
    [{ actor_type: 'device', actor_id: 'D1', device_uid: 'D1' }, 'device'],
    [{ actor_type: 'device', actor_id: 'D2', device_uid: 'D1' }, 'device D2'],
    [{ actor_type: 'user', actor_id: null, detail: { username: 'mallory' } }, 'unknown user “mallory”'],
    [{ actor_type: 'user', actor_id: null, detail: {} }, 'unknown user'],
    [{ actor_type: 'user', actor_id: 'u1', type: 'login_succeeded', detail: { username: 'old' } }, 'alice'],
    [{ actor_type: 'user', actor_id: 'u2', type: 'login_failed', detail: { username: 'bob' } }, 'bob'],
    [{ actor_type: 'user', actor_id: 'u2', type: 'user_disabled', detail: { username: 'bob' } }, 'u2'],
  ];
  for (const [event, text] of cases) assert.equal(actorText(event, names), text, JSON.stringify(event));
});

test('the detail is one line of key: value, objects as JSON', () => {
  assert.equal(detailText({ reason: 'bad_password', attempts: 3, where: { ip: '10.0.0.1' } }),
    'reason: bad_password · attempts: 3 · where: {"ip":"10.0.0.1"}');
  assert.equal(detailText({}), '');
  assert.equal(detailText(null), '');
  assert.equal(detailText('text'), '');
});

test('a long detail is cut at 300 characters', () => {
  const text = detailText({ topic: 'x'.repeat(400) });
  assert.equal(text.length, 301);
  assert.ok(text.endsWith('…'));
});
