/* The tables' pager: its arithmetic (pure, tested by node in tests/dashboard/js/), and its markup,
   written here once for every table that has one. */
import { $, el } from './dom.js';
import { fmtNumber } from './format.js';

export const PAGE_SIZES = [20, 50, 100, 200];  // rows per table page; the first is the default

/* One table's view: its page (offset, size), its filters, the total of the last answer, and the number of
   the last request, so an answer overtaken by a newer one (typing in the search box) draws nothing. */
export function pageState(filters) {
  return { offset: 0, size: PAGE_SIZES[0], total: 0, seq: 0, ...filters };
}

/* Where the last page starts; 0 when there are no rows. */
export function lastOffset(total, size) {
  return Math.max(0, Math.ceil(total / size) - 1) * size;
}

/* Where a step (first, prev, next, last) leads. */
export function stepOffset({ offset, size, total }, step) {
  return {
    first: 0,
    prev: Math.max(0, offset - size),
    next: Math.min(lastOffset(total, size), offset + size),
    last: lastOffset(total, size),
  }[step];
}

/* A page size chosen: one of PAGE_SIZES (else the default), on the page that holds the first row shown. */
export function resized(offset, chosen) {
  const size = PAGE_SIZES.includes(Number(chosen)) ? Number(chosen) : PAGE_SIZES[0];
  return { size, offset: Math.floor(offset / size) * size };
}

/* Rows a–b of the total (X-Total-Count), page n of m, and whether the steps back and forward lead anywhere. */
export function describePage({ offset, size, total }) {
  const pages = Math.max(1, Math.ceil(total / size));
  const last = Math.min(offset + size, total);
  return {
    range: total ? `${fmtNumber(offset + 1)}–${fmtNumber(last)} of ${fmtNumber(total)}` : 'none',
    page: `Page ${fmtNumber(Math.floor(offset / size) + 1)} of ${fmtNumber(pages)}`,
    atStart: offset === 0,
    atEnd: offset + size >= total,
  };
}

function stepButton(step, text, label) {
  return el('button', { type: 'button', class: 'ghost small', data: { step }, 'aria-label': label, text });
}

/* The pager's markup, into its empty box: `noun` names the rows ("Users"). */
function build(box, noun) {
  const sizes = el('select', { 'data-size': true, 'aria-label': `${noun} per page` },
    ...PAGE_SIZES.map((size) => el('option', { text: String(size) })));
  box.replaceChildren(
    el('label', { class: 'size' }, 'Rows ', sizes),
    el('span', { class: 'range', 'data-range': true }),
    el('span', { class: 'steps' },
      stepButton('first', '«', 'First page'),
      stepButton('prev', 'Previous'),
      el('span', { 'data-page': true }),
      stepButton('next', 'Next'),
      stepButton('last', '»', 'Last page')));
}

export function showPager(id, state) {
  const box = $(id);
  const view = describePage(state);
  box.querySelector('[data-range]').textContent = view.range;
  box.querySelector('[data-page]').textContent = view.page;
  for (const button of box.querySelectorAll('[data-step]')) {
    const back = button.dataset.step === 'first' || button.dataset.step === 'prev';
    button.disabled = back ? view.atStart : view.atEnd;
  }
}

export function clearPager(id) {
  for (const node of $(id).querySelectorAll('[data-range], [data-page]')) node.textContent = '';
}

/* Build the pager of a table and have its steps and its size move `state` and call `load`. */
export function wirePager(id, noun, state, load) {
  const box = $(id);
  build(box, noun);
  box.addEventListener('click', (event) => {
    const button = event.target.closest('[data-step]');
    if (!button || button.disabled) return;
    state.offset = stepOffset(state, button.dataset.step);
    load();
  });
  box.querySelector('[data-size]').addEventListener('change', (event) => {
    Object.assign(state, resized(state.offset, event.target.value));
    load();
  });
}
