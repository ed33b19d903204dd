"""`handshake serve` (SPEC §9): the ports checked before anything starts, the database brought up to date,
one embedded broker per deployment, then uvicorn. With TLS_CERT and TLS_KEY: HTTPS, and MQTT over TLS
on its own port, with no plaintext MQTT beside it unless the operator asks for it (SPEC §10)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import fcntl
import gc
import os
import signal
import socket
import ssl
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from shared.app import SERVICES, create_app, load_services
from shared.cli import fail, load_settings, service_module
from shared.collector import Collector
from shared.context import Context
from shared.errors import ConfigurationError, HandshakeError, WeakPasswordError
from shared.settings import Settings
from shared.signals import Interrupted, StopSignals, dump_tasks

DEFAULT_MQTT_PORT = 1883
DEFAULT_MQTT_TLS_PORT = 8883
PORT_SEARCH = 10  # ports tried above a default one that is taken


def register(commands: Any, port: Any) -> None:
    cmd = commands.add_parser("serve", help="run the platform (all-in-one, or one service)")
    cmd.add_argument("--host", default="127.0.0.1")
    cmd.add_argument("--http-port", type=port, default=8000)
    cmd.add_argument("--mqtt-port", type=port, help=f"plain MQTT; default {DEFAULT_MQTT_PORT} (or the next free one)")
    cmd.add_argument(
        "--mqtt-tls-port",
        type=port,
        help=f"MQTT over TLS, with HANDSHAKE_TLS_CERT/KEY; default {DEFAULT_MQTT_TLS_PORT} (or the next free one)",
    )
    cmd.add_argument(
        "--mqtt-plaintext",
        action="store_true",
        help="with TLS, also serve plain MQTT (off by default: a TLS deployment exposes none)",
    )
    cmd.add_argument("--service", choices=sorted(SERVICES))
    cmd.set_defaults(handler=serve)


# --- ports -------------------------------------------------------------------------------------


def _port_error(host: str, port: int) -> OSError | None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def check_port(host: str, port: int, flag: str) -> None:
    error = _port_error(host, port)
    if error is not None:
        fail(f"cannot listen on {host}:{port} ({error.strerror}): stop what uses it or pass another {flag}")


def _free_port(host: str, asked: int | None, default: int, flag: str, what: str) -> int:
    """A port that was asked for must be free. A default one is often held by a local broker
    (Mosquitto on 1883 or 8883), so then the next free one up to PORT_SEARCH above is taken, and said."""
    if asked is not None:
        check_port(host, asked, flag)
        return asked
    for port in range(default, default + PORT_SEARCH + 1):
        if _port_error(host, port) is None:
            if port != default:
                print(f"{what} port {default} is taken; the broker listens on {port}", flush=True)
            return port
    fail(f"{what} ports {default}-{default + PORT_SEARCH} on {host} are taken: pass {flag}")


def _asked(settings: Settings, args: argparse.Namespace, name: str) -> int | None:
    """A port the operator chose: on the command line, else in the settings (environment or file)."""
    flag: int | None = getattr(args, name)
    if flag is not None:
        return flag
    chosen: int | None = getattr(settings, name) if name in settings.model_fields_set else None
    return chosen


def mqtt_ports(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """The embedded broker's listeners: a plain one unless TLS leaves it out, a TLS one with TLS."""
    plaintext = settings.mqtt_plaintext or args.mqtt_plaintext
    plain_port, tls_port = _asked(settings, args, "mqtt_port"), _asked(settings, args, "mqtt_tls_port")
    if not settings.tls and tls_port is not None:
        fail("--mqtt-tls-port (HANDSHAKE_MQTT_TLS_PORT) needs HANDSHAKE_TLS_CERT and HANDSHAKE_TLS_KEY")
    if settings.tls and not plaintext and plain_port is not None:
        fail(
            "with TLS the broker serves no plaintext MQTT, so --mqtt-port (HANDSHAKE_MQTT_PORT) has nothing to"
            " name: add --mqtt-plaintext (HANDSHAKE_MQTT_PLAINTEXT=true) to serve it beside TLS, or leave it out"
        )
    if settings.tls and plaintext and plain_port is not None and plain_port == tls_port:
        fail(f"plain MQTT and MQTT over TLS cannot share the port {plain_port}: give each its own")
    ports: dict[str, Any] = {"mqtt_plaintext": plaintext}
    if not settings.tls or plaintext:
        ports["mqtt_port"] = _free_port(args.host, plain_port, DEFAULT_MQTT_PORT, "--mqtt-port", "MQTT")
    if settings.tls:
        ports["mqtt_tls_port"] = _free_port(
            args.host, tls_port, DEFAULT_MQTT_TLS_PORT, "--mqtt-tls-port", "MQTT over TLS"
        )
    return ports


def check_tls_files(settings: Settings) -> None:
    """The certificate and key load and belong together: else uvicorn and the broker would each fail
    with a traceback (a missing file is a bad setting already)."""
    if settings.tls_cert is None or settings.tls_key is None:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(settings.tls_cert, settings.tls_key)
    except (ssl.SSLError, OSError) as exc:
        fail(
            f"HANDSHAKE_TLS_CERT {settings.tls_cert} and HANDSHAKE_TLS_KEY {settings.tls_key} cannot be used"
            f" ({exc.strerror or exc}): give a PEM certificate and its private key"
        )


# --- start-up ----------------------------------------------------------------------------------


async def _prepare_deployment(settings: Settings, services: Sequence[str], stops: StopSignals) -> None:
    """The backends reachable, the schema up to date, the first admin: cut short by a stop signal,
    while the clean-up after it (closing the database) always runs to its end."""
    ctx = Context.build(settings)  # makes or checks the key directory
    try:
        await stops.starting(_prepare(ctx, services))
    finally:
        await ctx.stop()


async def _prepare(ctx: Context, services: Sequence[str]) -> None:
    from shared.migrations import upgrade

    await ctx.check_backends()
    await upgrade(ctx.db)
    if "account-manager" in services:
        try:
            password = await service_module("account_manager.accounts").ensure_admin(
                ctx, password=ctx.settings.admin_password
            )
        except WeakPasswordError as exc:  # only a given password can be weak
            raise ConfigurationError(f"HANDSHAKE_ADMIN_PASSWORD is refused: {exc.detail}") from exc
        if password is not None and not ctx.settings.admin_password:
            print(f"Created the user 'admin' with the password: {password}", flush=True)
            print("It is shown only this once.", flush=True)
        elif password is not None:
            print("Created the user 'admin' with the password from HANDSHAKE_ADMIN_PASSWORD.", flush=True)


_HELD: list[int] = []  # lock files held for the life of the process


def _one_embedded_broker(settings: Settings) -> None:
    """One embedded broker per deployment: a second one would take the first one's devices for gone
    and record them offline (its start-up census finds none of them connected to itself)."""
    path = settings.keys_dir / "serve.lock"  # the key directory exists: _prepare made or checked it
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        fail(f"cannot take the lock {path}: {exc.strerror}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        fail(
            f"another `handshake serve` (pid {holder}) runs this deployment's MQTT broker (it holds {path}):"
            " stop it first, or give this one its own HANDSHAKE_DATABASE_URL and HANDSHAKE_KEYS_DIR"
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD.append(fd)


def banner(settings: Settings, services: Sequence[str], host: str, http_port: int) -> list[str]:
    scheme = "https" if settings.tls else "http"
    where = f"{scheme}://{host}:{http_port}"
    # The dashboard is the account manager's: a banner of another service must not point at a 404.
    dashboard = f"  dashboard: {where}/admin" if "account-manager" in services else ""
    lines = [f"Handshake ({', '.join(services)}) on {where}  docs: {where}/docs{dashboard}"]
    if "device-connector" in services and not settings.clustered_broker:
        plain, tls = f"{host}:{settings.mqtt_port}", f"{host}:{settings.mqtt_tls_port}"
        if not settings.tls:
            lines.append(f"MQTT broker on {plain}")
        elif settings.mqtt_plain:
            lines.append(f"MQTT broker on {plain}, and over TLS on {tls}")
        else:
            lines.append(f"MQTT broker over TLS on {tls} (no plaintext MQTT: --mqtt-plaintext adds it)")
    return lines


def dump_stacks(signum: int, frame: FrameType | None) -> None:
    """SIGUSR1: every thread's stack and every asyncio task's, on stderr: what a server that does not
    answer, or does not stop, is waiting for. The server goes on."""
    faulthandler.dump_traceback(all_threads=True)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # between loops (start-up checks): the threads' stacks say it all
    dump_tasks(loop)


def serve(args: argparse.Namespace) -> None:
    """Start, serve, stop. A stop signal at any moment ends it cleanly (shared.signals); a start-up
    that cannot go on is one line and exit code 2. SIGUSR1 writes every stack to stderr."""
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, dump_stacks)
    with StopSignals() as stops:
        try:
            _start_and_serve(args, stops)
        except Interrupted:
            pass
        except ConfigurationError as exc:
            if stops.received is None:
                fail(str(exc))
        except HandshakeError as exc:
            if stops.received is None:
                fail(exc.detail)
        except Exception:
            if stops.received is None:  # not the clean-up of an interrupted start-up: a fault of ours
                raise
    # The process ends here, and its objects with it. Python's last collection at exit would walk every
    # one of them with nothing left to free (0.6 s for a server just started, 10 s on a loaded machine):
    # frozen, they are out of its sight. Files, sockets and the database were closed by the stop itself.
    gc.freeze()
    stops.exit()


def _start_and_serve(args: argparse.Namespace, stops: StopSignals) -> None:
    import uvicorn

    from shared.http_guard import GuardedH11Protocol, configure

    settings = load_settings()
    requested = [args.service] if args.service else list(SERVICES)
    services = [name for name in requested if SERVICES[name] in {m.__name__ for m in load_services(requested)}]
    if not services:
        fail(f"the service {args.service} is not part of this installation")
    check_tls_files(settings)
    check_port(args.host, args.http_port, "--http-port")
    update: dict[str, Any] = {"mqtt_host": args.host}
    embedded = "device-connector" in services and not settings.clustered_broker
    if embedded:
        update.update(mqtt_ports(settings, args))
    settings = settings.model_copy(update=update)
    stops.run(_prepare_deployment(settings, services, stops))
    if embedded:
        _one_embedded_broker(settings)
    app = create_app(settings, services=services)
    configure()  # the HTTP connection cap, below the file limit (held-open connections, issue 17)
    config = uvicorn.Config(
        app,
        http=GuardedH11Protocol,
        host=args.host,
        port=args.http_port,
        log_level="info",
        access_log=settings.access_log,
        lifespan="off",  # the application's start-up and shutdown are run by _serve, a signal can cut them short
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        server_header=False,
        proxy_headers=False,  # X-Forwarded-* only from HANDSHAKE_TRUSTED_PROXIES (shared.app)
        timeout_graceful_shutdown=5,  # open event streams must not hold a shutdown up
    )
    for line in banner(settings, services, args.host, args.http_port):
        print(line, flush=True)
    stops.run(_serve(app, config, stops), loop_factory=config.get_loop_factory())


async def _serve(app: FastAPI, config: uvicorn.Config, stops: StopSignals) -> None:
    """The application's lifespan around uvicorn: its start-up (the broker, the journal, the key and
    revocation watchers) is cancelled by a stop signal instead of running to its end first."""
    async with contextlib.AsyncExitStack() as stack:
        state = await stops.starting(stack.enter_async_context(app.router.lifespan_context(app)))
        ctx: Context | None = (state or {}).get("ctx")
        # The process is ours alone from here: its garbage collector runs at the server's pace.
        collector = Collector(ctx.metrics.gc_full_collections if ctx is not None else None)
        collector.start()
        stack.push_async_callback(collector.stop)
        if ctx is not None:
            ctx.hashing.throttle_when(collector.late)
        await _Server(config, state, stops).serve()


class _Server(uvicorn.Server):
    """uvicorn's server for an application that has started already: its lifespan state goes to every
    request, and a stop signal that came just before uvicorn took the signals over still stops it."""

    def __init__(self, config: uvicorn.Config, state: Mapping[str, Any] | None, stops: StopSignals) -> None:
        super().__init__(config)
        self.app_state = dict(state or {})
        self.stops = stops

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.lifespan.state.update(self.app_state)
        self.should_exit = self.should_exit or self.stops.received is not None
        await super().startup(sockets)
