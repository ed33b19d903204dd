/* The page's DOM helpers. Text from the server is only ever set with textContent, never parsed as HTML:
   usernames in events are typed by strangers. */
import { fmtAgo, fmtTime } from './format.js';

const SVG = 'http://www.w3.org/2000/svg';
const pending = {};  // debounce timers by name

export const $ = (id) => document.getElementById(id);

export function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key === 'on') for (const [name, fn] of Object.entries(value)) node.addEventListener(name, fn);
    else if (key === 'data') for (const [name, v] of Object.entries(value)) node.dataset[name] = v;
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === 'string' || typeof child === 'number' ? String(child) : child);
  }
  return node;
}

export function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children) node.append(child);
  return node;
}

export function svgText(attrs, text) {
  const node = svg('text', attrs);
  node.textContent = text;
  return node;
}

export function setText(id, value) { $(id).textContent = value; }

/* A message shown in its place, hidden when there is none. */
export function note(id, message) {
  const node = $(id);
  node.textContent = message || '';
  node.hidden = !message;
}

export function debounce(name, ms, fn) {
  clearTimeout(pending[name]);
  pending[name] = setTimeout(fn, ms);
}

export function cancelDebounced() {
  for (const name of Object.keys(pending)) clearTimeout(pending[name]);
}

export function timeEl(iso) {
  const date = iso ? new Date(iso) : null;
  if (!date || Number.isNaN(date.getTime())) return el('span', { class: 'sub', text: 'never' });
  const full = date.toLocaleString([], { dateStyle: 'full', timeStyle: 'long' });
  return el('time', { datetime: iso, title: `${full} (${fmtAgo(date)})`, text: fmtTime(date) });
}
