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
    if out is not None and out.exists():
        fail(f"{out} exists already: secrets are shown once, so choose a new file")

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

    made = run(with_context(load_settings(), work))
    rows = [device.to_json() for device in made]
    if out is None:
        _write(sys.stdout, rows)
        return
    try:
        # 0600: the file holds every device's secret.
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", newline="") as handle:
            _write(handle, rows)
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}")
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
