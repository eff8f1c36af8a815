"""Bearer tokens and their scopes, shared by the broker's settings and HTTP face and by
the worker's and client's settings (no broker import here: a worker loads it too).

- :class:`Scope`: ``producer``, ``worker``, ``admin`` (what each may call is declared
  on each route and WebSocket method, see ``docs/security.md``);
- :class:`Secret`: a token as a settings field holds it, masked in every ``repr`` and
  ``str`` so that no log line, settings dump or error message shows it;
- :class:`TokenTable`: every token the broker accepts, by scope, looked up in
  constant time; :func:`parse_tokens_file` reads the ``--tokens-file`` format.

Messages about a bad token never quote it, nor the line it is on: a token written in
the wrong place (``abc123 admin``) must not end up on the operator's terminal or in a
log collector.
"""

from __future__ import annotations

import enum
import hmac
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr


class Scope(enum.StrEnum):
    """What a token may do. ``admin`` may do everything."""

    PRODUCER = "producer"
    WORKER = "worker"
    ADMIN = "admin"


_TOKEN_CHARS = re.compile(r"[!-~]+")
"""Visible ASCII: what fits in an ``Authorization: Bearer`` header as typed."""


class Secret(SecretStr):
    """A token as a settings field holds it: a :class:`pydantic.SecretStr`, masked in
    every ``repr`` and ``str`` (``get_secret_value()`` gives the text)."""


def secret_value(value: str | SecretStr | None) -> str | None:
    """The plain text of a token given either way."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value


def check_token(token: str, where: str) -> None:
    """Raise ValueError (naming ``where``, never the token) if ``token`` cannot be a
    bearer token: empty, or with spaces, commas or non-ASCII characters."""
    if not token:
        raise ValueError(f"{where}: an empty token is refused (it would let anyone in)")
    if not _TOKEN_CHARS.fullmatch(token) or "," in token:
        raise ValueError(
            f"{where}: a token must be visible ASCII without spaces or commas (the token "
            "itself is not shown)"
        )


def split_tokens(text: str, where: str) -> list[str]:
    """The tokens of a comma-separated list (``TRIOQ_ADMIN_TOKENS=a,b``)."""
    tokens = [item.strip() for item in text.split(",")]
    for token in tokens:
        check_token(token, where)
    return tokens


def parse_tokens_file(text: str, where: str) -> dict[Scope, list[str]]:
    """The tokens of a tokens file: one ``<scope> <token>`` per line, ``#`` starts a
    comment line, blank lines are skipped. Raises ValueError naming the line number."""
    found: dict[Scope, list[str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        words = stripped.split()
        at = f"{where}, line {number}"
        if len(words) != 2:
            raise ValueError(f"{at}: expected '<scope> <token>' (two words; the line is not shown)")
        scope_name, token = words
        try:
            scope = Scope(scope_name)
        except ValueError:
            # not quoted: a line written the wrong way round starts with the token
            raise ValueError(f"{at}: the scope must be producer, worker or admin") from None
        check_token(token, at)
        found.setdefault(scope, []).append(token)
    return found


def read_tokens_file(path: str) -> dict[Scope, list[str]]:
    """:func:`parse_tokens_file` on the file at ``path``; ValueError if unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the tokens file {path}: {exc}") from None
    return parse_tokens_file(text, f"tokens file {path}")


def read_token_file(path: str, where: str) -> str:
    """The one token a ``--token-file`` holds (surrounding whitespace stripped)."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: cannot read {path}: {exc}") from None
    check_token(token, f"{where} {path}")
    return token


@dataclass(frozen=True)
class TokenTable:
    """Every token a broker accepts, each with its scope. Empty: auth is off."""

    tokens: tuple[tuple[bytes, Scope], ...] = ()

    @classmethod
    def build(cls, given: Mapping[Scope, Iterable[str]]) -> TokenTable:
        """The table of ``given``; ValueError if one token is given two scopes (which
        one would it have?)."""
        scopes: dict[str, Scope] = {}
        for scope, tokens in given.items():
            for token in tokens:
                check_token(token, f"a {scope} token")
                if scopes.setdefault(token, scope) is not scope:
                    raise ValueError(
                        f"one token is given both the {scopes[token]} and the {scope} scope "
                        "(the token is not shown)"
                    )
        return cls(tuple((t.encode(), s) for t, s in scopes.items()))

    def __bool__(self) -> bool:
        return bool(self.tokens)

    def __repr__(self) -> str:
        counts = {s.value: sum(1 for _, t in self.tokens if t is s) for s in Scope}
        return f"TokenTable({counts})"

    def count(self, scope: Scope) -> int:
        return sum(1 for _, s in self.tokens if s is scope)

    def scope_of(self, credentials: bytes) -> Scope | None:
        """The scope of ``credentials``, or None if no token matches.

        Every token is compared, in constant time, whichever matches: the time taken
        says nothing about which token (or how much of one) was right."""
        found: Scope | None = None
        for token, scope in self.tokens:
            if hmac.compare_digest(credentials, token):
                found = scope
        return found


def ssl_context(verify: Any) -> ssl.SSLContext | bool:
    """What ``verify=`` means, as httpx takes it: True (the system's CAs), False (no
    verification: tests only), a path to a CA bundle (PEM) or an ``ssl.SSLContext``.

    httpx 0.28 deprecates a path string: it is turned into a context here."""
    if isinstance(verify, bool | ssl.SSLContext):
        return verify
    if isinstance(verify, str | Path):
        try:
            return ssl.create_default_context(cafile=str(verify))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load the CA bundle {verify}: {exc}") from None
    raise TypeError(
        f"verify must be a bool, a CA bundle's path or an ssl.SSLContext, not {verify!r}"
    )
