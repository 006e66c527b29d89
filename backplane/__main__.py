"""
C{python -m backplane COMMAND}: a command-line client and tools for the
operator of a backplane service (the service itself runs as C{twistd
backplane}).

  - C{sub}, C{pub}, C{tail}, C{check}: the command-line client
    (L{backplane.cli}): subscribe to a port, publish to one, read the
    monitor's live tail of a backplane, validate a config file.
  - C{hash-token}: the C{token_sha256} of a token (read from standard input,
    or made with C{--new}) and a C{[[user]]} table for the config file.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import TextIO

from backplane import cli
from backplane.auth.authority import MAX_TOKEN_LENGTH
from backplane.auth.users import hashToken, newToken

#: A token shorter than this (characters) gets a warning: easy to guess.
SHORT_TOKEN = 20


def parser() -> argparse.ArgumentParser:
    """
    The command line.
    """
    main = argparse.ArgumentParser(
        prog="python -m backplane",
        description="A command-line client of a backplane service (which runs as "
                    "'twistd backplane --config FILE'), and tools for its operator. "
                    "'python -m backplane COMMAND --help' tells more of each.",
        epilog="examples: python -m backplane sub localhost:1500; "
               "echo hello | python -m backplane pub localhost:1501")
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli.addCommands(commands)
    hashing = commands.add_parser(
        "hash-token", help="print the token_sha256 of a token, and a [[user]] table",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Print the hex SHA-256 of a token (what a [[user]] table's token_sha256\n"
            "holds: the config keeps only that), then a [[user]] table ready to paste\n"
            "into the config file. The token is read from standard input (one line;\n"
            "typed without echo on a terminal), or made with --new."),
        epilog=(
            "examples:\n"
            "  python -m backplane hash-token --new --name dashboard --subscribe TIME\n"
            "  python -m backplane hash-token --name ci --publish 'builds.*' < token.txt"))
    hashing.add_argument(
        "--new", action="store_true",
        help="make a new random token (256 bits, URL-safe) instead of reading one, and print "
             "it first: it is shown only this once")
    hashing.add_argument("--name", default="client",
                         help="the user's name in the [[user]] table (default: %(default)s)")
    hashing.add_argument("--publish", action="append", default=[], metavar="NAME",
                         help="a backplane name or glob pattern the user may publish to "
                              "(repeatable)")
    hashing.add_argument("--subscribe", action="append", default=[], metavar="NAME",
                         help="a backplane name or glob pattern the user may subscribe to "
                              "(repeatable)")
    return main


class _Refused(Exception):
    """
    What the user gave cannot be used; the message says why.
    """


def _readToken(stdin: TextIO) -> str:
    if stdin.isatty():
        token = getpass.getpass("Token (not shown): ")
    else:
        token = stdin.read(MAX_TOKEN_LENGTH + 2)
        token = token[:-1] if token.endswith("\n") else token
    if not token:
        raise _Refused("no token on standard input (or use --new to make one)")
    if len(token) > MAX_TOKEN_LENGTH:
        raise _Refused(f"the token is longer than {MAX_TOKEN_LENGTH} characters")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise _Refused("the token must be one line without spaces or control characters "
                       "(it travels in a line, an HTTP header and a URL)")
    return token


def _userTable(name: str, digest: str, publish: list[str], subscribe: list[str]) -> str:
    def toml(value: object) -> str:
        return json.dumps(value, ensure_ascii=False)

    return (f"[[user]]\n"
            f"name = {toml(name)}\n"
            f"token_sha256 = {toml(digest)}\n"
            f"publish = {toml(publish)}\n"
            f"subscribe = {toml(subscribe)}\n")


def hashTokenCommand(options: argparse.Namespace, stdin: TextIO, stdout: TextIO,
                     stderr: TextIO) -> int:
    """
    C{hash-token}: print the token (with C{--new}), its hex SHA-256, and a
    C{[[user]]} table.

    @return: the exit status.
    """
    try:
        token = newToken() if options.new else _readToken(stdin)
    except _Refused as e:
        stderr.write(f"python -m backplane hash-token: {e}\n")
        return 1
    digest = hashToken(token)
    stdout.write(f"{token}\n{digest}\n" if options.new else f"{digest}\n")
    stdout.flush()
    if options.new:
        stderr.write("The first line is the new token: give it to its client now, it is kept "
                     "nowhere. The second is its SHA-256.\n")
    elif len(token) < SHORT_TOKEN:
        stderr.write(f"warning: a token of {len(token)} characters is easy to guess; "
                     f"--new makes a strong one\n")
    stderr.flush()
    stdout.write("\n")
    stdout.write("# For the config file (the token itself never goes there):\n")
    stdout.write(_userTable(options.name, digest, options.publish, options.subscribe))
    return 0


def main(argv: list[str] | None = None, stdin: TextIO | None = None,
         stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """
    Run a command.

    @return: the exit status.
    """
    options = parser().parse_args(argv)
    if options.command == "hash-token":
        return hashTokenCommand(options, stdin or sys.stdin, stdout or sys.stdout,
                                stderr or sys.stderr)
    if options.command in cli.commandNames():
        return cli.run(options, stderr=stderr)
    raise AssertionError(options.command)  # pragma: no cover - argparse allows no other


if __name__ == "__main__":
    sys.exit(main())
