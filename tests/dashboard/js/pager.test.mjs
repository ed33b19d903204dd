// The tables' pager arithmetic (account_manager/dashboard/pager.js): offsets, steps, sizes and what it says.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  PAGE_SIZES, describePage, lastOffset, pageState, resized, stepOffset,
} from '../../../account_manager/dashboard/pager.js';

test('a table starts on its first page at the first size, with its filters', () => {
  assert.deepEqual(pageState({ query: '', role: '' }), { offset: 0, size: 20, total: 0, seq: 0, query: '', role: '' });
  assert.equal(PAGE_SIZES[0], 20);
});

test('lastOffset is where the last page starts, 0 for no rows', () => {
  const cases = [[0, 20, 0], [1, 20, 0], [20, 20, 0], [21, 20, 20], [46, 20, 40], [60, 20, 40], [1001, 50, 1000]];
  for (const [total, size, offset] of cases) assert.equal(lastOffset(total, size), offset, `${total} by ${size}`);
});

test('each step leads to its page and never past either end', () => {
  const cases = [
    // offset, total, step, new offset (size 20)
    [0, 46, 'next', 20], [20, 46, 'next', 40], [40, 46, 'next', 40],
    [40, 46, 'prev', 20], [10, 46, 'prev', 0], [0, 46, 'prev', 0],
    [20, 46, 'first', 0], [0, 46, 'last', 40], [0, 0, 'last', 0], [0, 0, 'next', 0],
  ];
  for (const [offset, total, step, expected] of cases) {
    assert.equal(stepOffset({ offset, size: 20, total }, step), expected, `${step} from ${offset} of ${total}`);
  }
});

test('a new size keeps the page holding the first row shown', () => {
  assert.deepEqual(resized(40, '50'), { size: 50, offset: 0 });
  assert.deepEqual(resized(60, '50'), { size: 50, offset: 50 });
  assert.deepEqual(resized(250, 100), { size: 100, offset: 200 });
  assert.deepEqual(resized(100, '20'), { size: 20, offset: 100 });
});

test('a size not offered falls back to the default', () => {
  for (const chosen of ['7', '', 'all', '1000']) assert.equal(resized(0, chosen).size, 20, chosen);
});

test('the pager tells the rows shown, the page and which steps lead anywhere', () => {
  assert.deepEqual(describePage({ offset: 0, size: 20, total: 46 }),
    { range: '1–20 of 46', page: 'Page 1 of 3', atStart: true, atEnd: false });
  assert.deepEqual(describePage({ offset: 20, size: 20, total: 46 }),
    { range: '21–40 of 46', page: 'Page 2 of 3', atStart: false, atEnd: false });
  assert.deepEqual(describePage({ offset: 40, size: 20, total: 46 }),
    { range: '41–46 of 46', page: 'Page 3 of 3', atStart: false, atEnd: true });
  assert.deepEqual(describePage({ offset: 0, size: 50, total: 46 }),
    { range: '1–46 of 46', page: 'Page 1 of 1', atStart: true, atEnd: true });
});

test('an empty table is one page of none, with no step anywhere', () => {
  assert.deepEqual(describePage({ offset: 0, size: 20, total: 0 }),
    { range: 'none', page: 'Page 1 of 1', atStart: true, atEnd: true });
});
