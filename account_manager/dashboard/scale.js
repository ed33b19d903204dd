/* The chart's arithmetic: its series, the scale of its y axis and where everything goes. Pure: no DOM,
   so node's test runner checks it as it is (tests/dashboard/js/). */

export const SERIES = [
  { key: 'logins', cls: 's-logins', label: 'Logins', total: 'total-logins' },
  { key: 'login_failures', cls: 's-failures', label: 'Failures', total: 'total-failures' },
  { key: 'device_connections', cls: 's-connections', label: 'Device connections', total: 'total-connections' },
];
const MIN_TOP = 4;  // the y axis reaches at least this far: a handful of events stays small, not a surge

/* A round step of the y axis at least `raw` long: 1, 2, 2.5, 5 or 10 times a power of ten, a whole number. */
export function niceStep(raw) {
  if (raw <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * power >= raw && Number.isInteger(m * power)) return m * power;
  return 10 * power;
}

/* One series' count over all the hours. */
export function seriesTotal(rows, key) {
  return rows.reduce((sum, row) => sum + (row[key] || 0), 0);
}

/* Where the chart of `rows` (one per hour, oldest first) goes in a box `boxWidth` pixels wide: the drawing's
   size, the plot inside its padding, the y axis from 0 to `top` in steps of `step`, one slot per hour
   holding a bar per series, and an hour label every `every` slots, counted back from the current hour. */
export function chartScale(rows, boxWidth) {
  const width = Math.max(260, Math.floor(boxWidth || 600));
  const height = width < 520 ? 210 : 250;
  const pad = { left: 48, right: 12, top: 12, bottom: 44 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const peak = Math.max(0, ...rows.flatMap((row) => SERIES.map((s) => row[s.key] || 0)));
  const step = niceStep(Math.max(peak, MIN_TOP) / 4);
  const top = step * Math.ceil(Math.max(peak, MIN_TOP) / step);
  const slot = plotW / rows.length;
  const bar = Math.max(1, Math.min(12, (slot - 3) / SERIES.length));
  const every = width < 520 ? 6 : width < 800 ? 4 : 3;
  const y = (v) => pad.top + plotH - (v / top) * plotH;
  return { width, height, pad, plotW, plotH, peak, step, top, slot, bar, every, y };
}

/* The values of the y axis' lines: 0, step, 2 step, … up to top. */
export function gridValues({ step, top }) {
  const values = [];
  for (let v = 0; v <= top; v += step) values.push(v);
  return values;
}

/* Whether hour i of n gets a label: the current (last) hour always does. */
export function labelled(i, n, every) {
  return (n - 1 - i) % every === 0;
}
