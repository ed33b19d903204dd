"""`handshake clients create|list|delete`: registered OAuth clients from the command line, as an admin
registers them over the API (the same checks, the same events, by the system). `handshake mfa
enrol|reset|code`: second factors set up or removed by the operator, and a TOTP code computed."""

from __future__ import annotations

import argparse
import binascii
import sys
import time
from typing import Any

from account_manager import clients, mfa, totp
from shared.cli import fail, load_settings, run, with_context
from shared.context import Context

GRANT_NAMES = {"authorization_code": clients.GrantType.AUTHORIZATION_CODE, "device_code": clients.GrantType.DEVICE_CODE}


async def _migrated(ctx: Context) -> None:
    from shared.migrations import upgrade

    await upgrade(ctx.db)


def create(args: argparse.Namespace) -> None:
    grants = [str(GRANT_NAMES.get(name, name)) for name in args.grant_type or ["authorization_code"]]

    async def work(ctx: Context) -> clients.NewClient:
        await _migrated(ctx)
        return await clients.create_client(
            ctx,
            name=args.name,
            redirect_uris=args.redirect_uri or [],
            grant_types=grants,
            client_type=clients.ClientType.CONFIDENTIAL if args.confidential else clients.ClientType.PUBLIC,
            actor_id=None,
            ip=None,
        )

    made = run(with_context(load_settings(), work))
    kind = "confidential" if made.secret else "public"
    print(f"created {kind} client {made.client.name!r}: client_id {made.client.id}")
    if made.secret:
        print(f"client_secret: {made.secret}  (shown only this once)")


def list_(args: argparse.Namespace) -> None:
    async def work(ctx: Context) -> list[Any]:
        await _migrated(ctx)
        found, _ = await clients.list_clients(ctx, limit=500, offset=0)
        return found

    for client in run(with_context(load_settings(), work)):
        print(f"{client.id}  {clients.type_of(client):<12}  {client.name}  {' '.join(client.grant_types)}")


def delete(args: argparse.Namespace) -> None:
    async def work(ctx: Context) -> None:
        await _migrated(ctx)
        await clients.delete_client(ctx, client_id=args.client_id, actor_id=None, ip=None)

    run(with_context(load_settings(), work))
    print(f"deleted client {args.client_id}; every session issued to it has ended")


def mfa_enrol(args: argparse.Namespace) -> None:
    async def work(ctx: Context) -> tuple[str, str, list[str]]:
        await _migrated(ctx)
        return await mfa.enrol_by_operator(ctx, username=args.name)

    secret, uri, codes = run(with_context(load_settings(), work))
    print(f"{args.name} now signs in with a second factor (every session of theirs has ended).")
    print(f"secret: {secret}")
    print(f"otpauth URI: {uri}")
    print(f"recovery codes: {' '.join(codes)}")
    print("Hand them over safely: they are shown only this once.")


def mfa_reset(args: argparse.Namespace) -> None:
    async def work(ctx: Context) -> None:
        await _migrated(ctx)
        await mfa.reset_by_operator(ctx, username=args.name)

    run(with_context(load_settings(), work))
    print(f"{args.name} has no second factor now (every session of theirs has ended).")


def mfa_code(args: argparse.Namespace) -> None:
    """The current code of a secret, as an authenticator app shows it (scripts and the README tour)."""
    secret = (sys.stdin.readline() if args.secret == "-" else args.secret).strip().replace(" ", "").upper()
    try:
        print(totp.code_at(secret, time.time()))
    except (ValueError, TypeError, binascii.Error):
        fail("that is not a TOTP secret (base32, as POST /v1/users/me/mfa/totp gives it)")


def register(commands: Any) -> None:
    second = commands.add_parser("mfa", help="second factors: enrol or reset a user's, compute a code")
    second_sub = second.add_subparsers(dest="mfa_command", required=True)
    enrol_cmd = second_sub.add_parser("enrol", help="give a user a TOTP factor at once; prints its secret and codes")
    enrol_cmd.add_argument("name")
    enrol_cmd.set_defaults(handler=mfa_enrol)
    reset_cmd = second_sub.add_parser("reset", help="remove a user's factor (lost authenticator and codes)")
    reset_cmd.add_argument("name")
    reset_cmd.set_defaults(handler=mfa_reset)
    code_cmd = second_sub.add_parser("code", help="print the current TOTP code of a secret (- reads it from stdin)")
    code_cmd.add_argument("secret")
    code_cmd.set_defaults(handler=mfa_code)

    cmd = commands.add_parser("clients", help="manage registered OAuth clients (apps and hubs)")
    sub = cmd.add_subparsers(dest="clients_command", required=True)
    made = sub.add_parser("create", help="register a client; prints its client_id (and secret)")
    made.add_argument("name")
    made.add_argument(
        "--redirect-uri", action="append", help="repeatable; loopback, https or a reverse-domain custom scheme"
    )
    made.add_argument(
        "--grant-type",
        action="append",
        help="authorization_code (default) or device_code, repeatable (refresh_token is always included)",
    )
    made.add_argument("--confidential", action="store_true", help="a client with a secret (default: public, PKCE)")
    made.set_defaults(handler=create)
    sub.add_parser("list", help="list registered clients").set_defaults(handler=list_)
    gone = sub.add_parser("delete", help="delete a client and end its sessions")
    gone.add_argument("client_id")
    gone.set_defaults(handler=delete)
