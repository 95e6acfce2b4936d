"""Value classifiers: pure functions from a field's bytes to the spans that hold a secret.

Each classifier finds candidates with a regular expression and then checks them
(Luhn, mod-97, entropy) so masking does not shred ordinary numbers and words. Spans are
byte offsets `(start, end)` into the value, sorted and non-overlapping.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable

Span = tuple[int, int]
Classifier = Callable[[bytes], list[Span]]

# Each pattern opens with a character class and checks what precedes right after it
# (`x(?<!yx)` rather than `(?<!y)x`): the same matches, but the regex engine can skip to
# candidate characters instead of trying every position.
_CARD = re.compile(rb"[0-9](?<![0-9][0-9])(?:[ -]?[0-9]){12,18}(?![0-9])")
# An email is found from its @: the local part is the run of these characters before it
# (1 to 64 of them, nothing of the kind before), the domain must match right after it.
_EMAIL_LOCAL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-"
_EMAIL_DOMAIN = re.compile(rb"[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}(?![A-Za-z0-9-])")
_SSN = re.compile(rb"[0-9](?<![0-9-][0-9])[0-9]{2}(?<!000)(?<!666)(?<!9[0-9][0-9])-(?!00)[0-9]{2}-(?!0000)[0-9]{4}"
                  rb"(?![0-9-])")
_NINO = re.compile(
    rb"[A-CEGHJ-PR-TW-Z](?<![A-Za-z0-9][A-CEGHJ-PR-TW-Z])[A-CEGHJ-NPR-TW-Z](?<!BG|GB|KN|NK|NT|TN|ZZ)"
    rb" ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D](?![A-Za-z0-9])"
)
_SIN = re.compile(rb"[1-79](?<![0-9-][1-79])[0-9]{2}([ -])[0-9]{3}\1[0-9]{3}(?![0-9-])")
_IBAN = re.compile(
    rb"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z][0-9]{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)"
    rb"(?![A-Za-z0-9])"
)
_TOKENS = re.compile(
    rb"(?<![A-Za-z0-9])(?:"
    rb"(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
    rb"|gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}"  # GitHub
    rb"|xox[abposr]-[A-Za-z0-9-]{10,250}"  # Slack
    rb"|[rs]k_(?:live|test)_[A-Za-z0-9]{16,247}"  # Stripe
    rb"|AIza[0-9A-Za-z_-]{35}"  # Google API key
    rb"|eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}"  # JWT
    rb")(?![A-Za-z0-9])"
)
_HEX = re.compile(rb"(?<![A-Za-z0-9])[0-9a-fA-F]{40,}(?![A-Za-z0-9])")
# Tokens are runs of these characters; only runs this long are looked at closely.
_TOKEN_RUN = re.compile(rb"[A-Za-z0-9+/_.=-]{20,}")
_BASE64 = re.compile(rb"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}={0,2}(?![A-Za-z0-9+/_=-])")


_DIGIT_VALUE = bytes(i - 48 if 48 <= i <= 57 else 0 for i in range(256))
_DOUBLED_DIGIT = bytes((2 * (i - 48) - 9 if i - 48 > 4 else 2 * (i - 48)) if 48 <= i <= 57 else 0 for i in range(256))


def luhn_valid(digits: bytes) -> bool:
    """The Luhn checksum of ASCII digits (cards, Canadian SINs): from the right, every second
    digit doubled (minus 9 past 9), summed by table lookups in C."""
    backwards = digits[::-1]
    total = sum(backwards[0::2].translate(_DIGIT_VALUE)) + sum(backwards[1::2].translate(_DOUBLED_DIGIT))
    return total % 10 == 0


def iban_valid(compact: bytes) -> bool:
    """ISO 13616 check: move the first four characters to the end, letters to numbers, mod 97 == 1."""
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = (compact[4:] + compact[:4]).decode("ascii")
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _digits(value: bytes) -> int:
    """How many ASCII digits a value holds: a C-speed pre-check that skips most values."""
    return len(value) - len(value.translate(None, b"0123456789"))


def _entropy(value: bytes) -> float:
    """Shannon entropy in bits per character: random tokens score high, words low."""
    length = len(value)
    return -sum(n / length * math.log2(n / length) for n in Counter(value).values())


def card(value: bytes) -> list[Span]:
    """Payment card numbers: 13-19 digits, optionally grouped by spaces or dashes, Luhn-valid."""
    spans: list[Span] = []
    if _digits(value) < 13:
        return spans
    for match in _CARD.finditer(value):
        digits = match.group().replace(b" ", b"").replace(b"-", b"")
        if luhn_valid(digits):
            spans.append(match.span())
    return spans


def email(value: bytes) -> list[Span]:
    """Email addresses (ASCII local part and domain with a top-level domain)."""
    spans: list[Span] = []
    done = 0
    at = value.find(b"@")
    while at >= 0:
        before = value[max(done, at - 65):at]  # never back into the last address found
        start = at - (len(before) - len(before.rstrip(_EMAIL_LOCAL)))
        if 0 < at - start <= 64 and (start == 0 or value[start - 1] not in _EMAIL_LOCAL):
            domain = _EMAIL_DOMAIN.match(value, at + 1)
            if domain is not None:
                spans.append((start, domain.end()))
                done = domain.end()
        at = value.find(b"@", at + 1)
    return spans


def national_id(value: bytes) -> list[Span]:
    """US SSN (123-45-6789, excluding never-issued ranges), UK National Insurance number
    (AB 12 34 56 C, excluding unused prefixes) and Canadian SIN (123 456 789, Luhn-valid)."""
    if _digits(value) < 6:
        return []
    spans = [match.span() for match in _SSN.finditer(value)]
    spans += [match.span() for match in _NINO.finditer(value)]
    spans += [match.span() for match in _SIN.finditer(value) if luhn_valid(re.sub(rb"[ -]", b"", match.group()))]
    return _merge(spans)


def iban(value: bytes) -> list[Span]:
    """IBANs in upper case, compact or printed in groups of four, that pass the mod-97 check."""
    spans: list[Span] = []
    if len(value) < 15 or _digits(value) < 2:
        return spans
    for match in _IBAN.finditer(value):
        start, end = match.span()
        # The grouped form may have swallowed a following upper-case word: shorten by groups.
        while end - start >= 15:
            if iban_valid(value[start:end].replace(b" ", b"")):
                spans.append((start, end))
                break
            end = value.rfind(b" ", start, end)
    return spans


def api_key(value: bytes) -> list[Span]:
    """Known token shapes (AWS, GitHub, Slack, Stripe, Google, JWT) and long high-entropy
    hex (>= 40 chars) or base64 (>= 32 chars, mixed case and digits) strings."""
    spans: list[Span] = []
    for run in _TOKEN_RUN.finditer(value):
        offset = run.start()
        text = run.group()
        spans += [(offset + m.start(), offset + m.end()) for m in _TOKENS.finditer(text)]
        spans += [(offset + m.start(), offset + m.end()) for m in _HEX.finditer(text) if _entropy(m.group().lower()) >= 3.0]
        for m in _BASE64.finditer(text):
            token = m.group()
            mixed = any(c in token for c in b"0123456789") and token.upper() != token and token.lower() != token
            if mixed and _entropy(token) >= 4.0:
                spans.append((offset + m.start(), offset + m.end()))
    return _merge(spans)


def _merge(spans: list[Span]) -> list[Span]:
    """Sort spans and fuse overlapping ones, so a value is never masked twice."""
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


CLASSIFIERS: dict[str, Classifier] = {
    "card": card,
    "email": email,
    "national_id": national_id,
    "iban": iban,
    "api_key": api_key,
}


def classify(value: bytes, names: tuple[str, ...]) -> list[tuple[int, int, str]]:
    """Spans found by the named classifiers, as `(start, end, name)`. Overlapping spans are
    fused; a fused span that grew past its first finder's span is named "" (unknown kind)."""
    found = [(start, end, name) for name in names for start, end in CLASSIFIERS[name](value)]
    if len(found) < 2:
        return found  # nothing to order or fuse
    found.sort()
    kept: list[tuple[int, int, str]] = []
    for start, end, name in found:
        if kept and start < kept[-1][1]:
            last = kept[-1]
            kept[-1] = (last[0], max(end, last[1]), last[2] if end <= last[1] else "")
        else:
            kept.append((start, end, name))
    return kept
