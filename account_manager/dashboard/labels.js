/* How an event is told: the colour of its type, who did it, and its detail in one line. Pure: no DOM,
   so node's test runner checks it as it is (tests/dashboard/js/). */

const BAD_TYPES = new Set([
  'login_failed', 'login_locked', 'refresh_reuse_detected', 'mqtt_auth_failed', 'acl_denied',
  'command_timeout', 'device_disabled', 'session_revoked', 'mfa_failed',
]);

export function typeClass(type) {
  if (BAD_TYPES.has(type)) return 't-bad';
  if (type === 'device_connected' || type === 'device_enabled') return 't-device';
  if (type === 'login_succeeded') return 't-good';
  return '';
}

/* `names`: user id -> username, of the users the API has shown so far. */
export function actorText(event, names) {
  if (event.actor_type === 'system') return 'system';
  if (event.actor_type === 'device') return event.actor_id && event.actor_id !== event.device_uid ? `device ${event.actor_id}` : 'device';
  if (!event.actor_id) return event.detail && event.detail.username ? `unknown user “${event.detail.username}”` : 'unknown user';
  return names.get(event.actor_id) || (event.detail && event.type.startsWith('login_') && event.detail.username) || event.actor_id;
}

export function detailText(detail) {
  if (!detail || typeof detail !== 'object') return '';
  const parts = Object.entries(detail).map(([key, value]) => `${key}: ${typeof value === 'object' ? JSON.stringify(value) : value}`);
  const text = parts.join(' · ');
  return text.length > 300 ? `${text.slice(0, 300)}…` : text;
}
