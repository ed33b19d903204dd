/* The users panel: the table, searched and paged by the server, with admin's disable and enable; and the
   names of the users seen so far, which the events show instead of ids. */
import { $, debounce, el, note, timeEl } from './dom.js';
import { api, guarded, isAdmin, refusal, session } from './api.js';
import { refreshCounts } from './counts.js';
import { actorText } from './labels.js';
import { clearPager, pageState, showPager, wirePager } from './pager.js';
import { arm, cell, disarm, emptyRow, fetchPage, isArmed, toggleButton } from './tables.js';

export const names = new Map();  // user id -> username, from what the API has shown us
const users = pageState({ query: '', role: '' });

export function whoEl(event) {
  const known = event.actor_type === 'user' && event.actor_id;
  return el('span', { class: 'who', data: known ? { actor: event.actor_id } : {}, text: actorText(event, names) });
}

/* Events arrive before the user list that names their actors: put the names in once it has come. */
export function relabel() {
  for (const node of document.querySelectorAll('.who[data-actor]')) {
    const name = names.get(node.dataset.actor);
    if (name && node.textContent !== name) node.textContent = name;
  }
}

function userRow(user) {
  names.set(user.id, user.username);
  const action = isAdmin() && user.id !== session.me.id
    ? toggleButton(user.disabled, { user: user.username }, (button) => setUserDisabled(user, button))
    : null;
  return el('tr', { data: { userId: user.id, username: user.username } },
    cell('User', el('strong', { text: user.username }), el('span', { class: 'sub', text: user.email || user.id })),
    cell('Role', el('span', { class: 'pill off', text: user.role })),
    cell('Last login', timeEl(user.last_login_at)),
    cell('Sessions', String(user.active_sessions)),
    cell('Status', el('span', { class: `pill ${user.disabled ? 'disabled' : 'active'}`, text: user.disabled ? 'disabled' : 'active' })),
    el('td', { class: 'actions' }, action));
}

export function loadUsers() {
  return guarded('users-note', async () => {
    const r = await fetchPage('/v1/admin/users', users, { query: users.query, role: users.role });
    if (!r) return;
    if (!r.ok) { note('users-note', `Users refused (${refusal(r)}).`); return; }
    note('users-note', '');
    const rows = r.data.map(userRow);
    if (!rows.length) rows.push(emptyRow(6, users.query || users.role ? 'No user matches.' : 'No users.'));
    disarm();
    $('users-table').tBodies[0].replaceChildren(...rows);
    showPager('users-pager', users);
    relabel();
  });
}

async function setUserDisabled(user, button) {
  if (!user.disabled && !isArmed(button)) { arm(button, user.username); return; }
  disarm();
  button.disabled = true;
  await guarded('users-note', async () => {
    const r = await api(`/v1/admin/users/${encodeURIComponent(user.id)}`, { method: 'PATCH', body: { disabled: !user.disabled } });
    if (!r.ok) note('users-note', `Refused (${refusal(r)}).`);
  });
  await loadUsers();
  refreshCounts();
}

/* Back to the first page, as a new session starts. */
export function rewindUsers() { users.offset = 0; }

export function clearUsers() {
  $('users-table').tBodies[0].replaceChildren();
  clearPager('users-pager');
  note('users-note', '');
  names.clear();
}

export function initUsers() {
  $('user-search').addEventListener('input', (event) => {
    debounce('user-search', 300, () => { users.query = event.target.value.trim(); users.offset = 0; loadUsers(); });
  });
  $('user-role').addEventListener('change', (event) => { users.role = event.target.value; users.offset = 0; loadUsers(); });
  wirePager('users-pager', 'Users', users, loadUsers);
}
