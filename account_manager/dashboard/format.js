/* How the page writes numbers and moments. Pure: no DOM, so node's test runner checks it as it is
   (tests/dashboard/js/). */

export const pad2 = (n) => String(n).padStart(2, '0');

export function fmtNumber(n) { return typeof n === 'number' ? n.toLocaleString() : '–'; }

/* Every moment on the page is written this one way: local 24-hour time, HH:MM:SS, after the date
   (YYYY-MM-DD) unless it is today. Its tooltip gives the full date, the time zone and how long ago. */
export function fmtTime(date, now = new Date()) {
  const clock = `${pad2(date.getHours())}:${pad2(date.getMinutes())}:${pad2(date.getSeconds())}`;
  if (date.toDateString() === now.toDateString()) return clock;
  return `${date.getFullYear()}-${pad2(date.getMonth() + 1)}-${pad2(date.getDate())} ${clock}`;
}

export function fmtAgo(date, now = Date.now()) {
  const s = Math.round((now - date.getTime()) / 1000);
  if (s < 45) return 'just now';
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/* Where a UTC hour starts on the local clock: 14:00, or 19:30 in a zone half an hour off. */
export function hourLabel(date) {
  return `${pad2(date.getHours())}:${pad2(date.getMinutes())}`;
}
