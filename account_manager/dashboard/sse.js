/* Server-Sent Events read by hand (fetch can send the Authorization header; the browser's own SSE client
   cannot): frames end at a blank line; fields are id, event, data, retry; lines starting with ':' are
   comments. Pure: no DOM, so node's test runner checks it as it is (tests/dashboard/js/). */

const MAX_BUFFER = 1048576;  // characters of a frame not ended yet

/* The text read so far and a new chunk: the frames complete in them, and the text left for the next chunk. */
export function splitFrames(buffer, chunk) {
  // CRLF and CR end lines too; a CR at the very end may be the first half of a CRLF.
  let rest = (buffer + chunk).replace(/\r\n|\r(?=[^\n])/g, '\n');
  if (rest.length > MAX_BUFFER) throw new Error('an event frame is too large');
  const frames = [];
  let cut;
  while ((cut = rest.indexOf('\n\n')) >= 0) {
    frames.push(rest.slice(0, cut));
    rest = rest.slice(cut + 2);
  }
  return { frames, rest };
}

/* A frame's data lines joined (null when it has none), and its retry in milliseconds (null when none). */
export function parseFrame(frame) {
  const data = [];
  let retry = null;
  for (const line of frame.split('\n')) {
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') data.push(value);
    else if (field === 'retry' && /^\d+$/.test(value)) retry = Number(value);
  }
  return { data: data.length ? data.join('\n') : null, retry };
}
