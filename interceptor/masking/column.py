"""Masking one result field: a style applied to the whole value or to classified spans.

A ColumnMasker is built once per result column (when the RowDescription arrives) and
then called per row, so everything that can be decided up front is decided there:
unknown styles, a missing hash key, or a binary type that cannot be masked safely are
MaskingErrors before the first row, and the per-row call is one bound function.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from interceptor.decision import MaskSpec
from interceptor.errors import MaskingError
from interceptor.masking.classifiers import CLASSIFIERS, classify

STYLES = ("redact", "partial", "hash", "null")
REDACTED = b"****"
HASH_HEX_CHARS = 16

# PostgreSQL types whose binary send format is the raw text bytes: safe to rewrite.
TEXT_TYPE_OIDS = frozenset({25, 1043, 1042, 19})  # text, varchar, bpchar, name

_SEPARATED_KINDS = frozenset({"card", "national_id", "iban"})


class FieldMasker(Protocol):
    """Masks one field of a row: `mask(value)` gives the bytes to send, None for SQL NULL;
    `nulls`: whether a NULL field is masked too (called with b""), or left NULL."""

    @property
    def nulls(self) -> bool: ...

    def mask(self, value: bytes | memoryview) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class ConstantMasker:
    """Every value, NULL included, becomes `value` (None: NULL): for a value computed from a
    masked column, where any part kept (a last four, a hash, even NULL or not) could be an
    oracle on the masked value."""

    value: bytes | None = REDACTED
    nulls: ClassVar[bool] = True

    def mask(self, value: bytes | memoryview) -> bytes | None:
        return self.value


def _partial_keep_last4(value: bytes) -> bytes:
    """Digits and letters but the last four become '*', separators stay: '**** **** **** 1111'."""
    kept = 0
    out = bytearray(value)
    for i in range(len(out) - 1, -1, -1):
        if out[i : i + 1].isalnum():
            if kept >= 4:
                out[i] = 42
            kept += 1
    return bytes(out)


def _partial_email(value: bytes) -> bytes:
    local, _, domain = value.rpartition(b"@")
    return local[:1] + b"***@" + domain


# A value that is one email address and nothing else: a composite or JSON text with an email
# in it ('(1,ada@example.com,"4111 ...")') must not keep all that follows the '@'.
_WHOLE_EMAIL = re.compile(r"[^\s@\"'(),;:<>\[\]{}]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


# A value that is one number written in groups (a card, an account): digits, spaces, dashes.
_WHOLE_NUMBER = re.compile(r"[0-9](?:[0-9 -]{6,}[0-9])")


def _partial_text(value: bytes) -> bytes:
    """A whole value of unknown kind: a value that is one email address keeps its first
    letter and domain; one grouped number of eight or more digits (a card) its last four
    digits and its separators; other text of eight or more characters its last four
    characters; anything shorter is redacted."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MaskingError(f"cannot mask partially a value that is not UTF-8 text: {exc.reason}") from None
    if _WHOLE_EMAIL.fullmatch(text):
        return _partial_email(value)
    if _WHOLE_NUMBER.fullmatch(text) and sum(c.isdigit() for c in text) >= 8:
        return _partial_keep_last4(value)
    return REDACTED + text[-4:].encode() if len(text) >= 8 else REDACTED


def _partial(value: bytes, kind: str) -> bytes:
    if kind in _SEPARATED_KINDS:
        return _partial_keep_last4(value)
    if kind == "email":
        return _partial_email(value)
    if kind == "api_key":
        return value[:4] + REDACTED
    return _partial_text(value)


@dataclass(frozen=True, slots=True)
class ColumnMasker:
    """Masks one column's values: the whole value when `classifiers` is empty, else only
    the spans they find. `binary` says the values arrive in PostgreSQL binary format."""

    style: str = "redact"
    classifiers: tuple[str, ...] = ()
    key: bytes = b""
    binary: bool = False
    _apply: Callable[[bytes | memoryview], bytes | None] = field(init=False, repr=False, compare=False)
    nulls: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise MaskingError(f"unknown mask style {self.style!r} (expected one of {', '.join(STYLES)})")
        unknown = [name for name in self.classifiers if name not in CLASSIFIERS]
        if unknown:
            raise MaskingError(f"unknown classifier(s) {', '.join(unknown)} (known: {', '.join(CLASSIFIERS)})")
        if self.style == "hash" and not self.key:
            raise MaskingError("mask style 'hash' needs a key, which this flow was not given (the daemon's "
                               "masking key: <state_dir>/mask.key, or masking.hash_key_file in settings)")
        apply = self._mask_spans if self.classifiers else self._whole()
        object.__setattr__(self, "_apply", apply)

    @classmethod
    def for_column(cls, spec: MaskSpec, *, whole: bool, type_oid: int, format_code: int, key: bytes = b"") -> ColumnMasker:
        """The masker for a result column the policy matched: `whole` when the column itself is
        listed in `spec.columns`, else it masks what `spec.classifiers` find in its values.

        Binary values of non-text types (int, numeric, ...) can only become NULL: any other
        style is refused here, before a row is sent, rather than guessed at.
        """
        binary = format_code == 1
        if binary and type_oid not in TEXT_TYPE_OIDS and not (whole and spec.style == "null"):
            raise MaskingError(
                f"rule {spec.rule!r}: cannot mask binary values of type oid {type_oid} with style "
                f"{spec.style!r}{'' if whole else ' and classifiers'}; only style 'null' on the whole column is safe"
            )
        return cls(spec.style, () if whole else spec.classifiers, key, binary)

    def mask(self, value: bytes | memoryview) -> bytes | None:
        """The masked value, or None for SQL NULL."""
        return self._apply(value)

    def _whole(self) -> Callable[[bytes | memoryview], bytes | None]:
        if self.style == "redact":
            return lambda value: REDACTED
        if self.style == "null":
            return lambda value: None
        if self.style == "hash":
            return self._hash
        return lambda value: _partial(bytes(value), "")

    def _hash(self, value: bytes | memoryview) -> bytes:
        """Keyed so equal values stay joinable across rows and queries without being guessable."""
        return hmac.new(self.key, value, hashlib.sha256).hexdigest()[:HASH_HEX_CHARS].encode()

    def _mask_spans(self, value: bytes | memoryview) -> bytes | None:
        data = bytes(value)
        spans = classify(data, self.classifiers)
        if not spans:
            return data
        if self.style == "null":
            return None
        pieces = []
        position = 0
        for start, end, kind in spans:
            pieces.append(data[position:start])
            pieces.append(self._mask_span(data[start:end], kind))
            position = end
        pieces.append(data[position:])
        return b"".join(pieces)

    def _mask_span(self, span: bytes, kind: str) -> bytes:
        if self.style == "redact":
            return REDACTED
        if self.style == "hash":
            # Hash the canonical form so '4111 1111 ...' and '4111-1111-...' stay joinable.
            canonical = span.replace(b" ", b"").replace(b"-", b"") if kind in _SEPARATED_KINDS else span
            return self._hash(canonical)
        return _partial(span, kind)
