"""Settings of SPEC §10: environment variables with the HANDSHAKE_ prefix, or a TOML file named by
HANDSHAKE_CONFIG. Built once by the command line (or a test) and handed down; never read at import."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, IPvAnyNetwork, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

SUPPORTED_ALGS = ("ES256", "EdDSA", "RS256", "HS256")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HANDSHAKE_", extra="ignore", frozen=True)

    database_url: str = "sqlite+aiosqlite:///./handshake.db"
    redis_url: str | None = None
    # Keys and channels in Redis are prefixed, so several deployments (or test runs) share one server.
    redis_prefix: str = "handshake:"
    keys_dir: Path = Path("./handshake-keys")
    jwt_alg: str = "ES256"
    secret: str | None = None
    issuer: str = "http://127.0.0.1:8000"
    audience: str = "handshake"
    access_ttl: int = Field(default=900, ge=30, le=86_400)
    refresh_ttl: int = Field(default=30 * 86_400, ge=60)
    device_token_ttl: int = Field(default=3600, ge=60, le=86_400)
    exchanged_ttl: int = Field(default=300, ge=30, le=3600)
    refresh_reuse_grace: int = Field(default=10, ge=0, le=300)
    open_registration: bool = True
    partner_audiences: Annotated[list[str], NoDecode] = Field(default_factory=list)
    admin_password: str | None = None
    # SPEC §12: users of these roles must have a second factor (TOTP); until they enrol, their tokens
    # serve only the enrolment routes (403 mfa_enrolment_required elsewhere). [] turns the rule off.
    mfa_required_roles: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["admin", "support"])
    mqtt_hook_secret: str | None = None
    geoip_db: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (addresses or CIDRs, comma
    # separated); none by default: the client is the TCP peer. Lockout and presence key on it.
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = Field(default_factory=list)
    mqtt_max_packet: int = Field(default=256 * 1024, ge=1024)
    mqtt_max_conn_per_ip: int = Field(default=0, ge=0)
    # Deliveries a client may have outstanding before it is disconnected (protocol_error), and the
    # messages kept for an offline persistent session (past it the oldest go).
    mqtt_max_inflight: int = Field(default=1000, ge=1)
    mqtt_max_queued: int = Field(default=10_000, ge=1)
    # Where the embedded broker listens; the command line's --host, --mqtt-port and --mqtt-tls-port set
    # them. With TLS_CERT and TLS_KEY it listens for MQTT over TLS on MQTT_TLS_PORT and, unless
    # MQTT_PLAINTEXT asks for it too, not for plain MQTT: a TLS deployment leaks nothing in clear text.
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=0, le=65535)
    mqtt_tls_port: int = Field(default=8883, ge=0, le=65535)
    mqtt_plaintext: bool = False
    # SPEC §6 "On a clustered broker": `embedded` (amqtt in this process), or RabbitMQ / EMQX with the
    # connector as their identity backend. Then MQTT_BROKER_URL is where the connector connects as an
    # MQTT client (mqtt://user:password@host:1883), MQTT_BROKER_API_URL the broker's management API
    # with admin credentials (http://user:password@host:15672 or :18083), for kicks and presence.
    mqtt_broker: Literal["embedded", "rabbitmq", "emqx"] = "embedded"
    mqtt_broker_url: str | None = None
    mqtt_broker_api_url: str | None = None
    # RabbitMQ: the AMQP URL for presence events (default: MQTT_BROKER_URL's host and credentials on
    # 5672) and the vhost its MQTT plugin serves (`mqtt.vhost`).
    mqtt_broker_amqp_url: str | None = None
    mqtt_vhost: str = "/"

    # Operational knobs beyond SPEC §10 (documented in the README).
    # One log line per HTTP request (uvicorn's access log): off by default, as it cost about 5% of the
    # CPU of an everyday request (issue 11); /metrics counts every request either way.
    access_log: bool = False
    leeway: int = Field(default=30, ge=0, le=30)
    backend_timeout: float = Field(default=1.0, gt=0, le=10)
    # Database connections a process keeps open. No overflow beyond it: a request waits (up to
    # backend_timeout) for a pooled connection rather than opening one that is closed right after,
    # which under load cost more than the query (a PostgreSQL backend forked per request).
    db_pool_size: int = Field(default=20, ge=1, le=500)
    # How stale the revocation view may be before token checks fail closed (SPEC §11).
    revocation_max_staleness: float = Field(default=4.0, gt=0)
    reconcile_interval: float = Field(default=1.0, gt=0)
    key_reload_interval: float = Field(default=1.0, gt=0)
    hash_workers: int = Field(default=0, ge=0)  # 0: one per core
    hash_queue: int = Field(default=64, ge=1)
    # argon2id cost: OWASP's recommendation by default (t=2, m=19 MiB, p=1).
    argon2_time_cost: int = Field(default=2, ge=1)
    argon2_memory_kib: int = Field(default=19_456, ge=8)
    argon2_parallelism: int = Field(default=1, ge=1)
    introspect_rate: int = Field(default=100, ge=1)
    max_body: int = Field(default=64 * 1024, ge=1024)
    token_cache_size: int = Field(default=10_000, ge=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = os.environ.get("HANDSHAKE_CONFIG")
        if config:
            if not Path(config).is_file():
                raise FileNotFoundError(f"HANDSHAKE_CONFIG names {config}, which is not a file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config)))
        return tuple(sources)

    @field_validator("partner_audiences", "cors_origins", "trusted_proxies", "mfa_required_roles", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        # "a,b" in the environment as well as a JSON list or a TOML array.
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("mfa_required_roles")
    @classmethod
    def _known_roles(cls, value: list[str]) -> list[str]:
        known = ("admin", "support", "manufacturer", "user")
        unknown = [role for role in value if role not in known]
        if unknown:
            raise ValueError(f"unknown role {unknown[0]!r}: each must be one of {', '.join(known)}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"{value!r} is not a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("jwt_alg")
    @classmethod
    def _known_alg(cls, value: str) -> str:
        if value not in SUPPORTED_ALGS:
            raise ValueError(f"must be one of {', '.join(SUPPORTED_ALGS)}")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.jwt_alg == "HS256" and (not self.secret or len(self.secret) < 32):
            raise ValueError("HANDSHAKE_SECRET of at least 32 characters is required with HS256")
        if self.audience in self.partner_audiences:
            raise ValueError("HANDSHAKE_PARTNER_AUDIENCES must not contain HANDSHAKE_AUDIENCE")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("HANDSHAKE_TLS_CERT and HANDSHAKE_TLS_KEY go together")
        for name, path in (("HANDSHAKE_TLS_CERT", self.tls_cert), ("HANDSHAKE_TLS_KEY", self.tls_key)):
            if path is not None and not path.is_file():
                raise ValueError(f"{name} names {path}, which is not a file")
        if self.tls and self.mqtt_plain and self.mqtt_port and self.mqtt_port == self.mqtt_tls_port:
            raise ValueError("HANDSHAKE_MQTT_PORT and HANDSHAKE_MQTT_TLS_PORT must differ")
        if self.is_sqlite:
            database = sqlite_file(self.database_url)
            if database is not None and not database.parent.is_dir():
                # A typo in the path must not quietly start an empty deployment somewhere else.
                raise ValueError(f"HANDSHAKE_DATABASE_URL: the directory {database.parent} does not exist")
        if self.geoip_db is not None and not self.geoip_db.is_file():
            raise ValueError(f"HANDSHAKE_GEOIP_DB names {self.geoip_db}, which is not a file")
        if self.mqtt_broker == "embedded":
            if self.mqtt_broker_url:
                raise ValueError("HANDSHAKE_MQTT_BROKER_URL needs HANDSHAKE_MQTT_BROKER=rabbitmq or emqx")
        else:
            for name in ("mqtt_broker_url", "mqtt_broker_api_url", "mqtt_hook_secret"):
                if not getattr(self, name):
                    raise ValueError(f"HANDSHAKE_MQTT_BROKER={self.mqtt_broker} needs HANDSHAKE_{name.upper()}")
            if not self.mqtt_broker_url.startswith(("mqtt://", "mqtts://")):  # type: ignore[union-attr]
                raise ValueError("HANDSHAKE_MQTT_BROKER_URL must look like mqtt://user:password@host:1883")
        return self

    def client_address(self, ip: str | None) -> str | None:
        """An address a broker reports for its client (EMQX's `peerhost`, RabbitMQ's `peer_host`), or
        None if it is one of the trusted proxies: a broker behind one sees the proxy, not the client."""
        if not ip or not self.trusted_proxies:
            return ip or None
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        return None if any(address in network for network in self.trusted_proxies) else ip

    @property
    def tls(self) -> bool:
        """HTTPS, and MQTT over TLS on the embedded broker (TLS_CERT and TLS_KEY, which go together)."""
        return self.tls_cert is not None

    @property
    def mqtt_plain(self) -> bool:
        """Whether the embedded broker listens for plain MQTT: without TLS always, with TLS only when
        the operator asked for it (MQTT_PLAINTEXT)."""
        return not self.tls or self.mqtt_plaintext

    @property
    def clustered_broker(self) -> bool:
        return self.mqtt_broker != "embedded"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite database URL; None for an in-memory one."""
    path = url.split(":///", 1)[1] if ":///" in url else ""
    path = path.split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None
