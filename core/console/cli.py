"""``switchboard console``: the operator console's commands (``hash-password``)."""

from __future__ import annotations

import json
import sys

import click

from core.console.auth import hash_password

MIN_PASSWORD = 12


@click.group(help="the operator console (admin.console): hash-password")
def console() -> None:
    pass


@console.command(
    "hash-password",
    help="make a password_hash for [[admin.users]]: asks for the password twice, or reads "
    "one line from standard input with --stdin",
)
@click.option("--name", default="operator", show_default=True, help="the user's name")
@click.option("--stdin", "from_stdin", is_flag=True, help="read the password from stdin")
def hash_password_command(name: str, from_stdin: bool) -> int:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD:
        print(f"error: use at least {MIN_PASSWORD} characters")
        return 2
    print("[[admin.users]]")
    print(f"name = {json.dumps(name)}")
    print(f'password_hash = "{hash_password(password)}"')
    return 0
