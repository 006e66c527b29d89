"""
C{python -m backplane}: the operator's commands, run as a user runs them.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from backplane.auth.authority import MAX_TOKEN_LENGTH, Authority
from backplane.config import parseConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """
    C{python -m backplane ARGS}, with C{stdin} as its standard input.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "backplane", *args], input=stdin,
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


class HashTokenTests(SynchronousTestCase):
    def test_help(self) -> None:
        result = run("--help")
        self.assertEqual(result.returncode, 0)
        self.assertIn("hash-token", result.stdout)
        result = run("hash-token", "--help")
        self.assertEqual(result.returncode, 0)
        text = " ".join(result.stdout.split())
        for words in ["token_sha256", "standard input", "--new", "--name", "--publish",
                      "--subscribe", "shown only this once", "examples:"]:
            self.assertIn(words, text)

    def test_noCommand(self) -> None:
        result = run()
        self.assertEqual(result.returncode, 2)
        self.assertIn("usage: python -m backplane", result.stderr)
        self.assertEqual(result.stdout, "")

    def test_fromStandardInput(self) -> None:
        token = "a-token-long-enough-to-pass"
        result = run("hash-token", "--name", "alice", "--subscribe", "TIME", "--subscribe",
                     "chat.*", "--publish", "LOGS", stdin=token + "\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, "")
        digest = hashlib.sha256(token.encode()).hexdigest()
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], digest)
        self.assertNotIn(token, result.stdout)
        document = tomllib.loads(result.stdout.split("\n", 1)[1])
        self.assertEqual(document, {"user": [{"name": "alice", "token_sha256": digest,
                                              "publish": ["LOGS"],
                                              "subscribe": ["TIME", "chat.*"]}]})

    def test_withoutNewline(self) -> None:
        result = run("hash-token", stdin="a-token-long-enough-to-pass")
        self.assertEqual(result.stdout.splitlines()[0],
                         hashlib.sha256(b"a-token-long-enough-to-pass").hexdigest())

    def test_new(self) -> None:
        """
        C{--new} prints a strong token, then its hash, then a user table that
        the config accepts and that authenticates the token.
        """
        result = run("hash-token", "--new", "--name", "dashboard", "--subscribe", "TIME",
                     stdin="ignored\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        token, digest, *_ = result.stdout.splitlines()
        self.assertRegex(token, r"^[A-Za-z0-9_-]{43}$")
        self.assertEqual(digest, hashlib.sha256(token.encode()).hexdigest())
        self.assertIn("kept nowhere", result.stderr)
        config = parseConfig(tomllib.loads(result.stdout.split("\n", 2)[2]))
        identity = Authority.fromConfig(config).identify(token)
        self.assertEqual(identity.name, "dashboard")
        self.assertTrue(identity.permissions.maySubscribe("TIME"))
        self.assertFalse(identity.permissions.mayPublish("TIME"))
        self.assertNotEqual(run("hash-token", "--new").stdout.split()[0], token)

    def test_nameQuoted(self) -> None:
        result = run("hash-token", "--name", 'O"Brien \\ café 🎉', stdin="x" * 30)
        document = tomllib.loads(result.stdout.split("\n", 1)[1])
        self.assertEqual(document["user"][0]["name"], 'O"Brien \\ café 🎉')

    def test_refused(self) -> None:
        for stdin, message in [
            ("", "no token on standard input"),
            ("\n", "no token on standard input"),
            ("two words\n", "without spaces or control characters"),
            ("two\nlines\n", "without spaces or control characters"),
            ("token\r\n", "without spaces or control characters"),
            ("x" * (MAX_TOKEN_LENGTH + 1), "longer than"),
        ]:
            result = run("hash-token", stdin=stdin)
            self.assertEqual(result.returncode, 1, stdin)
            self.assertEqual(result.stdout, "")
            self.assertIn(message, result.stderr)
            self.assertTrue(result.stderr.startswith("python -m backplane hash-token: "))

    def test_shortTokenWarned(self) -> None:
        result = run("hash-token", stdin="secret\n")
        self.assertEqual(result.returncode, 0)
        self.assertIn("easy to guess", result.stderr)
        self.assertEqual(result.stdout.splitlines()[0], hashlib.sha256(b"secret").hexdigest())


class ReadmeCommandTests(SynchronousTestCase):
    """
    The README's two commands work on a stock Debian or Ubuntu as written
    (a virtualenv first: PEP 668 refuses a bare C{pip install} there), and
    CI runs the test command as the README writes it.
    """

    def commands(self) -> dict[str, str]:
        lines = (ROOT / "README.md").read_text().splitlines()
        found = {}
        for heading in ("Run it", "Run the tests:"):
            start = next(i for i, line in enumerate(lines) if line.startswith(heading))
            found[heading] = next(line[4:] for line in lines[start + 1:]
                                  if line.startswith("    "))
        return found

    def test_virtualenvFirst(self) -> None:
        commands = self.commands()
        venv = "python3 -m venv .venv && . .venv/bin/activate && "
        self.assertEqual(commands["Run it"], venv + "pip install . && twistd -n backplane")
        self.assertEqual(commands["Run the tests:"], venv + "pip install '.[test]' && pytest")

    def test_ciRunsTheREADMEsTestCommand(self) -> None:
        """
        .ci/run reads the test command from the README (so the two cannot
        drift apart) and runs it in a clean clone.
        """
        script = (ROOT / ".ci" / "run").read_text()
        self.assertIn("/^Run the tests:/", script)
        self.assertIn('bash -euo pipefail -c "$command"', script)
        self.assertIn("git clone", script)
        (extract,) = [line for line in script.splitlines() if line.startswith('command="')]
        result = subprocess.run(["bash", "-c", extract + '\nprintf %s "$command"'],
                                capture_output=True, text=True, cwd=ROOT, timeout=60)
        self.assertEqual(result.stdout, self.commands()["Run the tests:"])
