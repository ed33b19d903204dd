/* The chart of the last 24 hours: logins, failures and device connections per hour, as SVG bars, with a
   tooltip per hour. Its arithmetic is in scale.js. */
import { $, debounce, setText, svg, svgText } from './dom.js';
import { api } from './api.js';
import { fmtNumber, hourLabel } from './format.js';
import { SERIES, chartScale, gridValues, labelled, seriesTotal } from './scale.js';

let hourly = [];

export async function loadHourly() {
  const r = await api('/v1/admin/stats/hourly?hours=24');
  if (!r.ok || !Array.isArray(r.data)) return;
  hourly = r.data;
  drawChart();
}

/* The y axis' lines and values, the hour labels under the plot (the current hour's always), the axis titles. */
function drawAxes(chart, rows, scale) {
  const { width, height, pad, plotW, plotH, slot, every, y } = scale;
  for (const v of gridValues(scale)) {
    chart.append(svg('line', { class: v ? 'grid' : 'baseline', x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v) }));
    chart.append(svgText({ class: 'axis', x: pad.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, fmtNumber(v)));
  }
  rows.forEach((row, i) => {
    if (!labelled(i, rows.length, every)) return;
    chart.append(svgText({ class: 'axis', x: pad.left + slot * (i + 0.5), y: pad.top + plotH + 16, 'text-anchor': 'middle' }, hourLabel(new Date(row.hour))));
  });
  chart.append(svgText({ class: 'axis-title', x: pad.left + plotW / 2, y: height - 4, 'text-anchor': 'middle' }, 'Hour (local time)'));
  chart.append(svgText({ class: 'axis-title', x: 12, y: pad.top + plotH / 2, 'text-anchor': 'middle', transform: `rotate(-90 12 ${pad.top + plotH / 2})` }, 'Per hour'));
}

/* Under the bars, one column per hour catches the pointer between them; bars and column alike name their hour.
   An hour without events has no bar. */
function drawBars(chart, rows, { pad, plotH, slot, bar, y }) {
  rows.forEach((row, i) => {
    chart.append(svg('rect', { class: 'column', x: pad.left + slot * i, y: pad.top, width: slot, height: plotH, 'data-hour': i }));
  });
  rows.forEach((row, i) => {
    const start = pad.left + slot * i + (slot - bar * SERIES.length) / 2;
    SERIES.forEach((s, j) => {
      const v = row[s.key] || 0;
      if (!v) return;
      chart.append(svg('rect', { class: `bar ${s.cls}`, x: start + bar * j, y: y(v), width: Math.max(1, bar - 1), height: y(0) - y(v), 'data-hour': i, 'data-series': s.key }));
    });
  });
}

/* Counts per hour as bars from a zero baseline, one group per hour: a quiet day is a flat line on labelled
   axes (and says "no data yet"), never a slope. */
function drawChart() {
  const box = $('chart');
  const rows = hourly;
  for (const s of SERIES) setText(s.total, fmtNumber(seriesTotal(rows, s.key)));
  if (!rows.length) { box.replaceChildren(); $('chart-empty').hidden = true; return; }
  const scale = chartScale(rows, box.clientWidth);
  const { width, height, peak } = scale;
  const total = SERIES.map((s) => `${seriesTotal(rows, s.key)} ${s.label.toLowerCase()}`).join(', ');
  const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': `Per hour over the last 24 hours: ${total}` });
  drawAxes(chart, rows, scale);
  drawBars(chart, rows, scale);
  const tip = svg('g', { class: 'tip', id: 'chart-tip', visibility: 'hidden' });
  chart.append(tip);
  chart.addEventListener('mouseover', (event) => {
    const target = event.target.closest('[data-hour]');
    if (target) showTip(chart, tip, Number(target.dataset.hour), scale);
  });
  chart.addEventListener('mouseleave', () => hideTip(chart, tip));
  box.replaceChildren(chart);
  $('chart-empty').hidden = peak > 0;
  box.classList.toggle('empty', peak === 0);
}

/* The hovered hour: its span and each series' count, in a box beside its column. */
function showTip(chart, tip, i, { pad, slot, width }) {
  const row = hourly[i];
  if (!row) return;
  for (const node of chart.querySelectorAll('.column.on')) node.classList.remove('on');
  chart.querySelector(`.column[data-hour="${i}"]`)?.classList.add('on');
  const start = new Date(row.hour);
  const lines = [`${hourLabel(start)}–${hourLabel(new Date(start.getTime() + 3600000))}`,
    ...SERIES.map((s) => `${s.label}: ${fmtNumber(row[s.key] || 0)}`)];
  const text = svg('text', { x: 8, y: 4 });
  lines.forEach((line, k) => {
    const span = svg('tspan', { x: 8, dy: 15, class: k ? SERIES[k - 1].cls : 'tip-hour' });
    span.textContent = line;
    text.append(span);
  });
  const back = svg('rect', { class: 'tip-box', x: 0, y: 0, rx: 6, width: 10, height: lines.length * 15 + 10 });
  tip.replaceChildren(back, text);
  tip.setAttribute('visibility', 'visible');
  const boxWidth = Math.ceil(text.getBBox().width) + 16;
  back.setAttribute('width', boxWidth);
  const right = pad.left + slot * (i + 1) + 6;
  const x = right + boxWidth <= width ? right : pad.left + slot * i - boxWidth - 6;
  tip.setAttribute('transform', `translate(${Math.max(0, x).toFixed(1)} ${pad.top})`);
}

function hideTip(chart, tip) {
  tip.setAttribute('visibility', 'hidden');
  for (const node of chart.querySelectorAll('.column.on')) node.classList.remove('on');
}

export function clearChart() {
  $('chart').replaceChildren();
  $('chart-empty').hidden = true;
  hourly = [];
}

/* Drawn again at the new width when the window's changes the chart's. */
export function initChart() {
  let lastWidth = 0;
  window.addEventListener('resize', () => debounce('resize', 150, () => {
    const width = $('chart').clientWidth;
    if (width !== lastWidth && hourly.length) { lastWidth = width; drawChart(); }
  }));
}
