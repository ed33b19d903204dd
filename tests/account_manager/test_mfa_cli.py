"""`handshake mfa enrol|reset|code` (the operator's way to give a user a second factor or take it
away, and a code computed on the command line, as the README tour does)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pyotp

from tests.shared.test_cli import assert_one_line_failure, cli, make_env


def test_mfa_code_prints_the_current_code_of_a_secret(tmp_path: Path) -> None:
    secret = pyotp.random_base32()
    into = time.time() % 30
    if into > 27:
        time.sleep(30 - into + 0.1)
    printed = cli(tmp_path, make_env(tmp_path), "mfa", "code", secret)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == pyotp.TOTP(secret).now() + "\n"
    assert_one_line_failure(cli(tmp_path, make_env(tmp_path), "mfa", "code", "not-base32!"), "not a TOTP secret")


def test_mfa_enrol_and_reset_on_the_command_line(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    made = cli(tmp_path, env, "users", "create", "dora", "--role", "admin", "--password", "correct horse battery")
    assert made.returncode == 0, made.stderr
    enrolled = cli(tmp_path, env, "mfa", "enrol", "dora")
    assert enrolled.returncode == 0, enrolled.stderr
    (secret,) = re.findall(r"^secret: ([A-Z2-7]{32})$", enrolled.stdout, re.M)
    assert f"otpauth://totp/Handshake:dora?secret={secret}" in enrolled.stdout
    (codes,) = re.findall(r"^recovery codes: (.+)$", enrolled.stdout, re.M)
    assert len(codes.split()) == 10
    assert_one_line_failure(cli(tmp_path, env, "mfa", "enrol", "dora"), "already")
    reset = cli(tmp_path, env, "mfa", "reset", "dora")
    assert reset.returncode == 0, reset.stderr
    assert_one_line_failure(cli(tmp_path, env, "mfa", "reset", "dora"), "no second factor")
    assert_one_line_failure(cli(tmp_path, env, "mfa", "enrol", "nobody"), "nobody")
