"""The `handshake` command line (SPEC §9). Anything wrong with the environment or the settings is one
line on stderr saying what and how to fix it, and exit code 2; never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import getpass
import importlib
import logging
import os
import socket
import sys
import tomllib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

from pydantic import ValidationError

from shared.context import Context
from shared.errors import ConfigurationError, HandshakeError
from shared.keys import KeyDirectory
from shared.models import ActorType, EventType
from shared.settings import Settings

EXIT_USAGE = 2


def fail(message: str) -> NoReturn:
    print(f"handshake: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


# HANDSHAKE_* names that are not settings but are read by the platform's own tools.
_OTHER_NAMES = frozenset({"HANDSHAKE_CONFIG", "HANDSHAKE_URL"})
_OTHER_PREFIXES = ("HANDSHAKE_TEST_", "HANDSHAKE_BENCH_", "HANDSHAKE_RABBITMQ_")


def unknown_setting_warnings(environ: Mapping[str, str], toml_keys: Iterable[str] = ()) -> list[str]:
    """A line for each HANDSHAKE_* variable or settings-file key that is no setting (a typo would
    otherwise leave the default in force without a word), naming the nearest real one."""
    fields = sorted(Settings.model_fields)
    variables = ["HANDSHAKE_" + name.upper() for name in fields]
    lines = []
    for name in sorted(environ):
        if not name.startswith("HANDSHAKE_") or name in _OTHER_NAMES or name.startswith(_OTHER_PREFIXES):
            continue
        if name not in variables:
            lines.append(_unknown(f"the variable {name}", name, variables))
    for key in sorted(toml_keys):
        if key not in fields:
            lines.append(_unknown(f"the settings-file key {key!r}", key, fields))
    return lines


def _unknown(what: str, name: str, known: list[str]) -> str:
    nearest = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {nearest[0]}?" if nearest else ""
    return f"warning: {what} is not a setting and is ignored{hint}"


def _toml_keys() -> list[str]:
    config = os.environ.get("HANDSHAKE_CONFIG")
    if not config:
        return []
    try:
        with open(config, "rb") as file:
            return list(tomllib.load(file))
    except (OSError, tomllib.TOMLDecodeError):
        return []  # Settings() says what is wrong with the file


def load_settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        if not first["loc"]:  # a rule across settings: its message names them
            fail(message)
        name = "HANDSHAKE_" + "_".join(str(part) for part in first["loc"]).upper()
        fail(f"bad setting {name}: {message}")
    except (OSError, ValueError) as exc:  # an unreadable or malformed HANDSHAKE_CONFIG file
        fail(f"cannot read the settings: {exc}")
    for line in unknown_setting_warnings(os.environ, _toml_keys()):
        print(f"handshake: {line}", file=sys.stderr, flush=True)
    return settings


def service_module(module: str) -> Any:
    # shared names the services by import string: it never imports them at module level.
    return importlib.import_module(module)


async def with_context(
    settings: Settings, work: Callable[[Context], Awaitable[Any]], *, create_keys: bool = True
) -> Any:
    ctx = Context.build(settings, create_keys=create_keys)
    try:
        await ctx.check_backends()
        return await work(ctx)
    finally:
        await ctx.stop()


def run(coroutine: Awaitable[Any]) -> Any:
    try:
        return asyncio.run(coroutine)  # type: ignore[arg-type]
    except ConfigurationError as exc:
        fail(str(exc))
    except HandshakeError as exc:
        fail(exc.detail)


# --- migrate, keys, users ----------------------------------------------------------------------


def migrate(args: argparse.Namespace) -> None:
    from shared.migrations import current_revision, upgrade

    async def work(ctx: Context) -> None:
        await upgrade(ctx.db)
        print(f"database at revision {await current_revision(ctx.db)}")

    run(with_context(load_settings(), work))


def keys(args: argparse.Namespace) -> None:
    settings = load_settings()
    if settings.jwt_alg == "HS256":
        fail("HS256 uses the one shared HANDSHAKE_SECRET: there is no key ring to rotate, list or revoke")
    directory = KeyDirectory(settings.keys_dir)
    if args.kid is not None and args.action != "revoke":
        fail(f"keys {args.action} takes no KID (only `keys revoke KID` does)")
    try:
        if args.action == "rotate":
            max_ttl = max(settings.access_ttl, settings.device_token_ttl, settings.exchanged_ttl)
            gone = directory.prune(max_token_ttl=max_ttl, leeway=settings.leeway)
            retired = [k.kid for k in directory.load() if k.retired_at is None]
            key = directory.add(settings.jwt_alg)
            print(f"new signing key {key.kid} ({key.alg}); running servers sign with it within seconds")
            for kid in gone:
                print(f"removed expired key {kid}")
            record_key_event(
                settings, EventType.KEY_ROTATED, {"kid": key.kid, "alg": key.alg, "retired": retired, "removed": gone}
            )
        elif args.action == "list":
            for key in sorted(directory.load(), key=lambda k: k.created_at):
                created = datetime.fromtimestamp(key.created_at, UTC).isoformat()
                state = "signing" if key.retired_at is None else "verify-only"
                print(f"{key.kid}  {key.alg}  {state}  created {created}")
        else:
            if not args.kid:
                fail("keys revoke needs the KID to revoke (see `handshake keys list`)")
            if not directory.remove(args.kid):
                fail(f"no key {args.kid} in {settings.keys_dir} (see `handshake keys list`)")
            replaced_by = None
            if not any(k.retired_at is None for k in directory.load()):
                key = directory.add(settings.jwt_alg)
                replaced_by = key.kid
                print(f"generated a new signing key {key.kid}")
            print(f"revoked {args.kid}: every token it signed is refused from now on")
            record_key_event(settings, EventType.KEY_REVOKED, {"kid": args.kid, "new_signing_key": replaced_by})
    except OSError as exc:
        fail(f"cannot use the key directory {settings.keys_dir}: {exc.strerror}")
    except ConfigurationError as exc:
        fail(str(exc))


def _operator() -> str:
    """Who ran the command: the login behind sudo, else this process's user, at this host."""
    try:
        name = os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        name = str(os.getuid())
    return f"{name}@{socket.gethostname()}"[:128]


def record_key_event(settings: Settings, type_: EventType, detail: dict[str, Any]) -> None:
    """The activity stream learns who changed the key ring and when (the dashboard shows it live).
    The change is made already: a database that cannot be reached leaves one warning line, never a
    failed emergency revoke."""

    async def work(ctx: Context) -> None:
        from shared.migrations import upgrade

        await upgrade(ctx.db)
        async with ctx.db.write() as tx:
            await ctx.events.record(
                tx, type_, actor_type=ActorType.SYSTEM, actor_id=None, detail={**detail, "operator": _operator()}
            )

    try:
        asyncio.run(with_context(settings, work, create_keys=False))
    except Exception as exc:
        reason = exc.detail if isinstance(exc, HandshakeError) else str(exc) or type(exc).__name__
        print(f"handshake: warning: {type_} done, but not recorded in the activity stream: {reason}", file=sys.stderr)


def users(args: argparse.Namespace) -> None:
    import secrets as _secrets

    from shared.models import Role

    try:
        role = Role(args.role)
    except ValueError:
        fail(f"--role must be one of {', '.join(r.value for r in Role)}")
    password = args.password or _secrets.token_urlsafe(15)

    async def work(ctx: Context) -> None:
        from shared.migrations import upgrade

        await upgrade(ctx.db)
        user = await service_module("account_manager.accounts").create_user(
            ctx, username=args.name, password=password, role=role
        )
        print(f"created {role.value} {user.username} (id {user.id})")
        if not args.password:
            print(f"password: {password}")

    run(with_context(load_settings(), work))


# --- the parser --------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake on the command line said in one line (SPEC §9), exit code 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see `{self.prog} --help`)")


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1 to 65535)")
    return port


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="handshake", description="Handshake: IoT device-and-user identity.")
    commands = parser.add_subparsers(dest="command", required=True)

    from shared import serving  # it builds on this module's helpers

    serving.register(commands, _port)

    commands.add_parser("migrate", help="bring the database schema up to date").set_defaults(handler=migrate)

    keys_cmd = commands.add_parser("keys", help="rotate, list or revoke signing keys")
    keys_cmd.add_argument("action", choices=["rotate", "list", "revoke"])
    keys_cmd.add_argument("kid", nargs="?")
    keys_cmd.set_defaults(handler=keys)

    users_cmd = commands.add_parser("users", help="manage users")
    users_sub = users_cmd.add_subparsers(dest="users_command", required=True)
    create = users_sub.add_parser("create", help="create a user of any type")
    create.add_argument("name")
    create.add_argument("--role", required=True)
    create.add_argument("--password", help="default: a generated one, printed once")
    create.set_defaults(handler=users)

    for module in ("account_manager.cli", "device_manager.cli", "device_connector.cli"):
        try:
            register: Callable[[Any], None] = importlib.import_module(module).register
        except ModuleNotFoundError:
            continue
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    try:
        _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C: whatever was running has been stopped (serve shuts down cleanly first).
        print("handshake: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def _main(argv: Sequence[str] | None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "keys" and args.action == "revoke" and args.kid is None and len(extra) == 1:
        # A kid made before kids stopped beginning with `-`: argparse takes it for an option, and the
        # emergency revoke must not fail on that (`handshake keys revoke -- KID` works as well).
        args.kid = extra[0]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.handler(args)


if __name__ == "__main__":
    main()
