"""The SPEC's vocabularies as StrEnums: their values are the strings on the wire."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    SUPPORT = "support"
    MANUFACTURER = "manufacturer"
    USER = "user"


class ActorType(StrEnum):
    USER = "user"
    DEVICE = "device"
    SYSTEM = "system"


class EventType(StrEnum):
    USER_REGISTERED = "user_registered"
    LOGIN_SUCCEEDED = "login_succeeded"
    LOGIN_FAILED = "login_failed"
    LOGIN_LOCKED = "login_locked"
    TOKEN_REFRESHED = "token_refreshed"
    REFRESH_REUSE_DETECTED = "refresh_reuse_detected"
    LOGOUT = "logout"
    SESSION_REVOKED = "session_revoked"
    PASSWORD_CHANGED = "password_changed"
    USER_UPDATED = "user_updated"
    USER_CREATED = "user_created"
    TOKEN_EXCHANGED = "token_exchanged"
    KEY_ROTATED = "key_rotated"
    KEY_REVOKED = "key_revoked"
    DEVICE_PROVISIONED = "device_provisioned"
    DEVICE_TOKEN_ISSUED = "device_token_issued"
    DEVICE_BOUND = "device_bound"
    DEVICE_UNBOUND = "device_unbound"
    DEVICE_SHARED = "device_shared"
    DEVICE_UNSHARED = "device_unshared"
    DEVICE_TRANSFERRED = "device_transferred"
    DEVICE_DISABLED = "device_disabled"
    DEVICE_ENABLED = "device_enabled"
    DEVICE_CONNECTED = "device_connected"
    DEVICE_DISCONNECTED = "device_disconnected"
    COMMAND_SENT = "command_sent"
    COMMAND_REPLIED = "command_replied"
    COMMAND_TIMEOUT = "command_timeout"
    MQTT_AUTH_FAILED = "mqtt_auth_failed"
    ACL_DENIED = "acl_denied"
    # OAuth 2 (registered clients, the code and device grants)
    CLIENT_CREATED = "client_created"
    CLIENT_DELETED = "client_deleted"
    AUTHORIZATION_CODE_REUSED = "authorization_code_reused"
    DEVICE_AUTHORIZATION_APPROVED = "device_authorization_approved"
    DEVICE_AUTHORIZATION_DENIED = "device_authorization_denied"
    # The second factor (SPEC §12)
    MFA_ENABLED = "mfa_enabled"
    MFA_DISABLED = "mfa_disabled"
    MFA_FAILED = "mfa_failed"
    RECOVERY_CODE_USED = "recovery_code_used"


class DeviceRole(StrEnum):
    """A user's role on one device (SPEC §5); each includes what the smaller ones may do."""

    VIEWER = "viewer"
    CONTROLLER = "controller"
    OWNER = "owner"

    @property
    def rank(self) -> int:
        return _DEVICE_ROLE_RANK[self]

    def allows(self, needed: DeviceRole) -> bool:
        return self.rank >= needed.rank


_DEVICE_ROLE_RANK = {DeviceRole.VIEWER: 1, DeviceRole.CONTROLLER: 2, DeviceRole.OWNER: 3}
