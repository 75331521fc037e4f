"""Override values that Hydra reads back exactly, and printed commands that run as printed.

Hydra's override lexer takes unquoted values of a limited alphabet only: a run folder under
``/data/my runs/`` or ``/home/jürgen/`` must be quoted, and inside quotes a ``'`` and the
backslashes before it must be escaped. :func:`hydra_value` does that, and only when needed, so
ordinary values stay readable.
"""

from __future__ import annotations

import re
import shlex
from functools import lru_cache
from typing import Any

_BACKSLASHES_BEFORE_QUOTE = re.compile(r"(\\*)(')")
_TRAILING_BACKSLASHES = re.compile(r"(\\+)$")


@lru_cache(maxsize=1)
def _parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def parse_value(text: str) -> Any:
    """What Hydra makes of ``key=<text>``; raises Hydra's error if it cannot read it."""
    (override,) = _parser().parse_overrides([f"key={text}"])
    return override.value()


def _quoted(text: str) -> str:
    # inside single quotes: a quote is escaped, and so is each backslash that precedes a quote
    # or the closing quote (Hydra's grammar: 2n backslashes + quote = n backslashes + quote)
    inner = _BACKSLASHES_BEFORE_QUOTE.sub(lambda m: m.group(1) * 2 + "\\'", text)
    inner = _TRAILING_BACKSLASHES.sub(lambda m: m.group(1) * 2, inner)
    return f"'{inner}'"


def hydra_value(text: str) -> str:
    """``text`` written so that Hydra's override parser returns exactly ``text`` as a string."""
    from hydra.errors import HydraException

    try:
        if parse_value(text) == text:
            return text
    except HydraException:
        pass
    return _quoted(text)


def unquote_value(text: str) -> str:
    """The string a user meant by ``text`` in ``key=<text>``: Hydra's quotes removed when it can read
    it, else the text as typed (Hydra rejects e.g. unquoted non-ASCII, which a shell passes as is)."""
    from hydra.errors import HydraException

    try:
        value = parse_value(text)
    except HydraException:
        return text
    return value if isinstance(value, str) else text


def command_arg(value: str, key: str | None = None) -> str:
    """One argument of a printed command, quoted so that a shell passes it on unchanged; with
    ``key``, the Hydra override ``key=value`` whose value is quoted for Hydra's override parser too
    (spaces, quotes, ``=``, ``,``, non-ASCII), so the command runs as printed."""
    text = value if key is None else f"{key}={hydra_value(value)}"
    # shlex.quote spells each ' of Hydra's quotes as '"'"'; inside double quotes a ' is plain, and a
    # text without $ ` \ " ! (what double quotes still expand) reads better so
    if "'" in text and not set(text) & set('$`\\"!'):
        return f'"{text}"'
    return shlex.quote(text)
