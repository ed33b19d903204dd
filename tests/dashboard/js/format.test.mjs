// How the dashboard writes numbers and moments (account_manager/dashboard/format.js).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { fmtAgo, fmtNumber, fmtTime, hourLabel, pad2 } from '../../../account_manager/dashboard/format.js';

test('pad2 writes two digits', () => {
  assert.equal(pad2(0), '00');
  assert.equal(pad2(7), '07');
  assert.equal(pad2(12), '12');
});

test('fmtNumber writes a number in the locale and anything else as a dash', () => {
  assert.equal(fmtNumber(0), '0');
  assert.equal(fmtNumber(46), '46');
  assert.equal(fmtNumber(1234567), (1234567).toLocaleString());
  for (const missing of [undefined, null, '12', NaN.toString()]) assert.equal(fmtNumber(missing), '–');
});

test('fmtTime writes today as the clock only, on the local 24-hour clock', () => {
  const now = new Date(2024, 5, 14, 18, 0, 0);
  assert.equal(fmtTime(new Date(2024, 5, 14, 9, 5, 7), now), '09:05:07');
  assert.equal(fmtTime(new Date(2024, 5, 14, 23, 59, 59), now), '23:59:59');
});

test('fmtTime writes another day with its date first', () => {
  const now = new Date(2024, 5, 14, 0, 0, 1);
  assert.equal(fmtTime(new Date(2024, 5, 13, 23, 59, 59), now), '2024-06-13 23:59:59');
  assert.equal(fmtTime(new Date(2023, 11, 1, 0, 0, 0), now), '2023-12-01 00:00:00');
});

test('fmtAgo rounds to the unit that reads best', () => {
  const now = new Date(2024, 5, 14, 12, 0, 0).getTime();
  const ago = (seconds) => fmtAgo(new Date(now - seconds * 1000), now);
  const cases = [
    [0, 'just now'], [44, 'just now'], [45, '1 min ago'], [90, '2 min ago'], [3599, '60 min ago'],
    [3600, '1 h ago'], [5 * 3600, '5 h ago'], [86399, '24 h ago'], [86400, '1 d ago'], [10 * 86400, '10 d ago'],
  ];
  for (const [seconds, text] of cases) assert.equal(ago(seconds), text, `${seconds} s`);
});

test('hourLabel writes where an hour starts on the local clock', () => {
  assert.equal(hourLabel(new Date(2024, 0, 1, 7, 0)), '07:00');
  assert.equal(hourLabel(new Date(2024, 0, 1, 19, 30)), '19:30');
});
