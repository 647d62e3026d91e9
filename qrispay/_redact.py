"""Keeping the credentials out of text: the Redactor, the registry of the
secrets of every open client, and the log scrubber fed by that registry.

Importing this module changes nothing: the log scrubber is installed by
``install_log_scrubber()``, which the HTTP core calls when a client is made.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = [
    "MASK",
    "Redactor",
    "install_log_scrubber",
    "live_secrets",
    "scrub_chain",
    "scrub_dsn",
]

MASK = "***"

# Whatever the value, a query parameter with a secret's name is masked. This
# also covers URLs of clients we do not know about (another SDK instance,
# a secret never registered).
_SECRET_QUERY = re.compile(r"(?i)\b(apikey|auth|token)(=|%3D)[^&\s\"'#<>]*")

_ESCAPE = re.compile(r"%[0-9A-F]{2}")

# A database connection string carries its password in one of two forms: a
# ``password=...`` keyword (maybe quoted, maybe a URL query parameter) or the
# ``scheme://user:PASSWORD@host`` userinfo of a URL. Masked whatever the value,
# so a DSN nobody registered (or one mistyped into a message) stays secret too.
_DSN_PASSWORD = re.compile(r"(?i)\b(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&'\"]*)")
# libpq ends the userinfo at the first '@' before any '/'.
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^:/?#@\s]*:)[^@/\s]*@")


def scrub_dsn(text: str) -> str:
    """``text`` with the password of any connection string in it masked."""
    text = _DSN_PASSWORD.sub(rf"\1{MASK}", text)
    return _URL_PASSWORD.sub(rf"\1{MASK}@", text)


def _variants(secret: str) -> set[str]:
    encoded = {quote(secret, safe=""), quote_plus(secret), quote(secret)}
    # A server echoing the URL back may lower-case the escapes.
    encoded |= {_ESCAPE.sub(lambda m: m.group().lower(), v) for v in encoded}
    # Echoes come back inside HTML pages and JSON strings, and excerpts are reprs.
    escaped = {
        html.escape(secret),
        html.escape(secret, quote=False),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(secret).replace("/", "\\/")[1:-1],
        repr(secret)[1:-1],
    }
    return {v for v in (secret, *encoded, *escaped) if v}


class Redactor:
    """Scrubs known secret values (raw and URL-encoded) and secret-named query
    parameters from text and from decoded JSON."""

    __slots__ = ("_variants",)

    def __init__(self, secrets: Iterable[str]):
        found: set[str] = set()
        for secret in secrets:
            if secret:
                found |= _variants(secret)
        # Longest first: a secret that contains another must go whole.
        self._variants = tuple(sorted(found, key=len, reverse=True))

    def contains_secret(self, text: str) -> bool:
        """Whether ``text`` holds one of the known secrets, in any form."""
        return any(v in text for v in self._variants)

    def scrub(self, text: str) -> str:
        """``text`` with every known secret and secret-named query value masked."""
        for variant in self._variants:
            if variant in text:
                text = text.replace(variant, MASK)
        return scrub_dsn(_SECRET_QUERY.sub(rf"\1\2{MASK}", text))

    def scrub_obj(self, value: Any) -> Any:
        """``value`` with every string in it scrubbed, dict keys included.

        Dicts and lists are copied (as plain ones); anything else is returned
        as it is. Walked with a stack of its own, so a deep value costs memory,
        not recursion; a container that holds itself maps to its own copy.
        """
        if not isinstance(value, (dict, list)):
            return self.scrub(value) if isinstance(value, str) else value
        root = _empty(value)
        # The containers being copied (the path from the root), by id.
        copies: dict[int, dict[Any, Any] | list[Any]] = {id(value): root}
        stack = [(value, root, _items(value))]
        while stack:
            source, copy, items = stack[-1]
            for key, child in items:
                if isinstance(key, str):
                    key = self.scrub(key)
                if isinstance(child, (dict, list)):
                    known = copies.get(id(child))
                    if known is not None:
                        _put(copy, key, known)
                        continue
                    child_copy = _empty(child)
                    _put(copy, key, child_copy)
                    copies[id(child)] = child_copy
                    stack.append((child, child_copy, _items(child)))
                    break
                _put(copy, key, self.scrub(child) if isinstance(child, str) else child)
            else:
                stack.pop()
                del copies[id(source)]
        return root


def _empty(container: dict[Any, Any] | list[Any]) -> dict[Any, Any] | list[Any]:
    return {} if isinstance(container, dict) else []


def _items(container: dict[Any, Any] | list[Any]) -> Iterator[tuple[Any, Any]]:
    # A list's items come with a key of None, which _put ignores.
    if isinstance(container, dict):
        return iter(container.items())
    return ((None, item) for item in container)


def _put(copy: dict[Any, Any] | list[Any], key: Any, value: Any) -> None:
    if isinstance(copy, dict):
        copy[key] = value
    else:
        copy.append(value)


def scrub_chain(error: BaseException, redactor: Redactor) -> None:
    """Scrub secrets from the text of every exception in a cause chain, in place.

    Tracebacks print each exception of the chain, so the one we raise being
    clean is not enough.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    pending: list[BaseException] = []
    while current is not None or pending:
        if current is None:
            current = pending.pop()
        if id(current) in seen:
            current = None
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            current.strerror = redactor.scrub(current.strerror)
        current.args = tuple(redactor.scrub(a) if isinstance(a, str) else a for a in current.args)
        notes = getattr(current, "__notes__", None)
        if isinstance(notes, list):
            notes[:] = [redactor.scrub(n) if isinstance(n, str) else n for n in notes]
        if current.__context__ is not None and current.__context__ is not current.__cause__:
            pending.append(current.__context__)
        current = current.__cause__


class _LiveSecrets:
    """The secrets of every open client, so log records can be scrubbed by value
    too. Counted: two clients may share one key."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._redactor: Redactor | None = None

    @property
    def redactor(self) -> Redactor:
        # Built when a record needs it, not on every open: rebuilding over every
        # live secret per client made opening N clients cost O(N^2).
        if self._redactor is None:
            self._redactor = Redactor(self._counts)
        return self._redactor

    def add(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            self._counts[secret] = self._counts.get(secret, 0) + 1
        self._redactor = None

    def remove(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            left = self._counts.get(secret, 0) - 1
            if left > 0:
                self._counts[secret] = left
            else:
                self._counts.pop(secret, None)
        self._redactor = None


live_secrets = _LiveSecrets()


class _LogScrubber(logging.Filter):
    """Masks secrets in records of httpx, httpcore and psycopg without silencing
    them."""

    installed = False

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the logging module's to report
            return True
        redactor = live_secrets.redactor
        if (
            redactor.contains_secret(message)
            or _SECRET_QUERY.search(message)
            or scrub_dsn(message) != message
        ):
            record.msg = redactor.scrub(message)
            record.args = ()
        return True


_SCRUBBED_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
    # The connection pool logs why a connection attempt failed.
    "psycopg",
    "psycopg.pool",
)
_log_scrubber = _LogScrubber()


def install_log_scrubber() -> None:
    """Put the log scrubber on the loggers that may print a URL or headers.

    Idempotent and cheap once done, so every new client may call it.
    """
    if _log_scrubber.installed:
        return
    # Filters on a logger do not see records its children propagate, so each
    # logger gets one.
    for name in _SCRUBBED_LOGGERS:
        target = logging.getLogger(name)
        if _log_scrubber not in target.filters:
            target.addFilter(_log_scrubber)
    _log_scrubber.installed = True
