"""Reading the small text files a user writes (``classes.txt``, ``meta.csv``, ``splits.json``).

Spreadsheet programs and Windows editors save these in whatever encoding they like: UTF-8,
UTF-8 with a byte-order mark, or Windows-1252 / Latin-1 (a group named ``Glühen 500 °C``).
:func:`read_text` accepts all of them, warns when the file was not UTF-8, and refuses a file
that is no text at all (binary, or UTF-16) with a message naming it.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from pscl.errors import DataError

log = logging.getLogger("pscl.data")

# Tried in this order after UTF-8 (with or without a byte-order mark): Windows-1252 is what
# spreadsheet programs write on Windows; Latin-1 decodes any byte, so it comes last.
FALLBACK_ENCODINGS: tuple[tuple[str, str], ...] = (("cp1252", "Windows-1252"), ("latin-1", "Latin-1"))
SAVE_AS_UTF8 = "save it as UTF-8 text (in a spreadsheet program: Save As > CSV UTF-8)"
# Control characters a text file may hold: tab, newlines, vertical tab, form feed.
_TEXT_CONTROLS = frozenset("\t\n\r\x0b\x0c")


def _refuse_binary(data: bytes, path: Path, what: str) -> None:
    """NUL bytes mean a binary file or UTF-16/32: no 8-bit encoding reads them as text."""
    if b"\x00" in data:
        kind = "UTF-16 text" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "a binary file or UTF-16 text"
        raise DataError(f"is not text: it holds NUL bytes ({kind}); pscl reads {what} as UTF-8, Windows-1252 "
                        "or Latin-1", path, SAVE_AS_UTF8)


def _decode(data: bytes) -> tuple[str, str | None]:
    """``(text, encoding name)``; the name is None for UTF-8 (a byte-order mark is dropped)."""
    try:
        return data.decode("utf-8-sig"), None  # utf-8-sig reads plain UTF-8 too
    except UnicodeDecodeError:
        pass
    for codec, name in FALLBACK_ENCODINGS:
        try:
            return data.decode(codec), name
        except UnicodeDecodeError:
            continue
    raise AssertionError("Latin-1 decodes every byte")  # pragma: no cover


def read_text(path: Path | str, what: str) -> str:
    """The text of ``path`` (``what`` names it in messages, e.g. ``meta.csv``), from UTF-8, UTF-8
    with a byte-order mark, Windows-1252 or Latin-1, in that order.

    Logs a warning naming the file and the encoding when it was not UTF-8. Raises
    :class:`DataError` naming the file when it cannot be read, or is not text (NUL bytes: a
    binary file or UTF-16; other control characters).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot be read ({exc.strerror or exc})", path,
                        "check that the file exists and that you may read it") from None
    _refuse_binary(data, path, what)
    text, encoding = _decode(data)
    stray = sorted({c for c in text if (ord(c) < 32 or ord(c) == 127) and c not in _TEXT_CONTROLS})
    if stray:
        raise DataError(f"is not text: it holds the control characters {', '.join(repr(c) for c in stray[:3])} "
                        f"(a binary file?); pscl reads {what} as UTF-8, Windows-1252 or Latin-1", path, SAVE_AS_UTF8)
    if encoding is not None:
        log.warning("%s is not UTF-8: read it as %s; if accented letters of the %s look wrong, %s", path,
                    encoding, what, SAVE_AS_UTF8)
    return text


def read_csv_rows(path: Path | str, what: str) -> csv.DictReader:
    """A :class:`csv.DictReader` over :func:`read_text` of ``path`` (quoted newlines kept)."""
    return csv.DictReader(io.StringIO(read_text(path, what), newline=""))
