// The chart's arithmetic (account_manager/dashboard/scale.js): the y axis' scale and the drawing's geometry.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  SERIES, chartScale, gridValues, labelled, niceStep, seriesTotal,
} from '../../../account_manager/dashboard/scale.js';

const hours = (counts) => counts.map((logins, i) => ({ hour: `2024-06-14T${String(i).padStart(2, '0')}:00:00Z`, logins }));
const quiet = hours(Array(24).fill(0));

test('niceStep rounds up to 1, 2, 2.5 or 5 times a power of ten, whole numbers only', () => {
  const cases = [[0, 1], [0.5, 1], [1, 1], [1.2, 2], [2, 2], [2.2, 5], [3, 5], [6, 10], [11, 20], [21, 25], [26, 50], [51, 100], [240, 250], [260, 500]];
  for (const [raw, step] of cases) assert.equal(niceStep(raw), step, `${raw}`);
});

test('a quiet day has an axis from 0 to 4, not a scale around nothing', () => {
  const scale = chartScale(quiet, 900);
  assert.equal(scale.peak, 0);
  assert.deepEqual(gridValues(scale), [0, 1, 2, 3, 4]);
});

test('one login is a quarter of the axis, not a bar to the top', () => {
  const scale = chartScale(hours([...Array(23).fill(0), 1]), 900);
  assert.equal(scale.top, 4);
  const baseline = scale.y(0);
  assert.equal(baseline - scale.y(1), (baseline - scale.y(4)) / 4);
  assert.equal(scale.y(4), scale.pad.top);
  assert.equal(scale.y(0), scale.pad.top + scale.plotH);
});

test('a busy hour sets the axis to a round top above it', () => {
  const cases = [[5, 2, 6], [17, 5, 20], [99, 25, 100], [101, 50, 150], [1234, 500, 1500]];
  for (const [peak, step, top] of cases) {
    const scale = chartScale(hours([peak, ...Array(23).fill(1)]), 900);
    assert.deepEqual([scale.step, scale.top], [step, top], `peak ${peak}`);
    assert.ok(gridValues(scale).length <= 5);
    assert.equal(gridValues(scale).at(-1), top);
  }
});

test('the peak is over every series', () => {
  const rows = [{ logins: 1, login_failures: 9, device_connections: 3 }, { device_connections: 12 }];
  assert.equal(chartScale(rows, 900).peak, 12);
});

test('the drawing is at least 260 wide, 600 when the box has no width yet, and lower when narrow', () => {
  assert.equal(chartScale(quiet, 100).width, 260);
  assert.equal(chartScale(quiet, 0).width, 600);
  assert.equal(chartScale(quiet, 700.7).width, 700);
  assert.equal(chartScale(quiet, 519).height, 210);
  assert.equal(chartScale(quiet, 520).height, 250);
});

test('each hour has one slot across the plot, and bars of at most 12 px that fit in it', () => {
  const wide = chartScale(quiet, 1200);
  assert.equal(wide.slot * 24, wide.plotW);
  assert.equal(wide.bar, 12);
  const narrow = chartScale(quiet, 300);
  assert.ok(narrow.bar * SERIES.length <= narrow.slot);
  assert.ok(narrow.bar >= 1);
});

test('hour labels thin out as the chart narrows, and the current hour always has one', () => {
  assert.deepEqual([300, 600, 1000].map((w) => chartScale(quiet, w).every), [6, 4, 3]);
  for (const every of [3, 4, 6]) {
    const shown = quiet.map((_, i) => i).filter((i) => labelled(i, 24, every));
    assert.equal(shown.at(-1), 23);
    assert.equal(shown.length, 24 / every);
  }
});

test('seriesTotal adds one series over the hours, a missing count as 0', () => {
  const rows = [{ logins: 2, login_failures: 1 }, { logins: 3 }, {}];
  assert.equal(seriesTotal(rows, 'logins'), 5);
  assert.equal(seriesTotal(rows, 'login_failures'), 1);
  assert.equal(seriesTotal(rows, 'device_connections'), 0);
  assert.equal(seriesTotal([], 'logins'), 0);
});
