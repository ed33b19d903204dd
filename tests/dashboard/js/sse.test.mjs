// Server-Sent Events read by hand (account_manager/dashboard/sse.js): frames and their fields.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { parseFrame, splitFrames } from '../../../account_manager/dashboard/sse.js';

test('frames end at a blank line; the rest waits for the next chunk', () => {
  assert.deepEqual(splitFrames('', 'data: 1\n\ndata: 2\n\ndata: 3'), { frames: ['data: 1', 'data: 2'], rest: 'data: 3' });
  assert.deepEqual(splitFrames('data: 3', '\n\n'), { frames: ['data: 3'], rest: '' });
  assert.deepEqual(splitFrames('', ''), { frames: [], rest: '' });
});

test('CRLF and CR end lines as LF does', () => {
  assert.deepEqual(splitFrames('', 'id: 1\r\ndata: a\r\n\r\nid: 2\rdata: b\r\rx').frames, ['id: 1\ndata: a', 'id: 2\ndata: b']);
});

test('a CR at the end of a chunk may be half a CRLF: it waits for the next', () => {
  const first = splitFrames('', 'data: a\r\n\r');
  assert.deepEqual(first.frames, []);
  const second = splitFrames(first.rest, '\ndata: b\r\n\r\n');
  assert.deepEqual(second.frames, ['data: a', 'data: b']);
});

test('a frame that never ends is refused past a megabyte', () => {
  assert.throws(() => splitFrames('x'.repeat(1048576), 'y'), /too large/);
  assert.doesNotThrow(() => splitFrames('', 'x'.repeat(1048576)));
});

test('data lines are joined with newlines; one space after the colon is dropped', () => {
  assert.deepEqual(parseFrame('id: 7\nevent: x\ndata: {"a":\ndata:1}'), { data: '{"a":\n1}', retry: null });
  assert.equal(parseFrame('data:  two spaces').data, ' two spaces');
  assert.equal(parseFrame('data').data, '');
});

test('comments and frames without data give no data', () => {
  assert.deepEqual(parseFrame(': keep-alive'), { data: null, retry: null });
  assert.deepEqual(parseFrame('id: 3\nevent: ping'), { data: null, retry: null });
});

test('retry is taken when it is a whole number of milliseconds', () => {
  assert.deepEqual(parseFrame('retry: 5000'), { data: null, retry: 5000 });
  assert.equal(parseFrame('retry: soon').retry, null);
  assert.equal(parseFrame('retry: -1').retry, null);
});
