"""`handshake devices provision`: a batch of devices and the file a factory prints labels from."""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Any

from device_manager import provisioning
from shared.cli import fail, load_settings, run, with_context
from shared.context import Context


def provision(args: argparse.Namespace) -> None:
    if not 1 <= args.count <= 100_000:
        fail("--count must be between 1 and 100000")
    out: Path | None = args.out
    handle: Any = sys.stdout
    if out is not None:
        if out.exists():
            fail(f"{out} exists already: secrets are shown once, so choose a new file")
        # Opened before anything is provisioned: secrets that cannot be written are never made.
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # 0600: it holds every secret
        except OSError as exc:
            fail(f"cannot write {out}: {exc.strerror}; nothing was provisioned")
        handle = os.fdopen(fd, "w", newline="")

    async def work(ctx: Context) -> list[provisioning.Provisioned]:
        from shared.migrations import upgrade

        await upgrade(ctx.db)
        made: list[provisioning.Provisioned] = []
        left = args.count
        while left:
            batch = min(left, provisioning.MAX_BATCH)
            made += await provisioning.provision(ctx, model=args.model, count=batch, actor_id=None, ip=None)
            left -= batch
        return made

    try:
        made = run(with_context(load_settings(), work))
    except BaseException:
        if out is not None:
            handle.close()
            out.unlink(missing_ok=True)  # nothing in it: no device of it was made
        raise
    rows = [{"uid": device.uid, "secret": device.secret, "claim_code": device.claim_code} for device in made]
    if out is None:
        _write(handle, rows)
        return
    try:
        with handle:
            _write(handle, rows)
    except OSError as exc:  # the disk filled up meanwhile: say so, the devices exist
        fail(f"cannot write {out}: {exc.strerror}; {len(rows)} devices were provisioned without their secrets saved")
    print(f"provisioned {len(rows)} {args.model} devices into {out}", file=sys.stderr)


def _write(handle: Any, rows: list[dict[str, str]]) -> None:
    writer = csv.DictWriter(handle, fieldnames=["uid", "secret", "claim_code"])
    writer.writeheader()
    writer.writerows(rows)


def register(commands: Any) -> None:
    devices = commands.add_parser("devices", help="manage devices")
    sub = devices.add_subparsers(dest="devices_command", required=True)
    cmd = sub.add_parser("provision", help="create devices; prints uid,secret,claim_code as CSV")
    cmd.add_argument("--model", required=True)
    cmd.add_argument("--count", type=int, default=1)
    cmd.add_argument("--out", type=Path, help="CSV file to write (created 0600); default: standard output")
    cmd.set_defaults(handler=provision)
