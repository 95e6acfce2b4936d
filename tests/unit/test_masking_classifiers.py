"""Classifiers find real secrets (checksums included) and leave ordinary values alone."""

import pytest

from interceptor.masking import api_key, card, classify, email, iban, national_id


def found(classifier, text: str) -> list[str]:
    value = text.encode()
    return [value[start:end].decode() for start, end in classifier(value)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("card 4111 1111 1111 1111 ok", ["4111 1111 1111 1111"]),
        ("4111-1111-1111-1111", ["4111-1111-1111-1111"]),
        ("amex 378282246310005.", ["378282246310005"]),
        ("4111 1111 1111 1112", []),  # Luhn fails
        ("order 123456789012", []),  # too short
        ("id 941111111111111111112", []),  # inside a longer number
    ],
)
def test_card_numbers_need_luhn(text, expected):
    assert found(card, text) == expected


def test_email_addresses():
    assert found(email, "mail ada.lovelace+x@mail.example.co.uk, bob@ex.io") == ["ada.lovelace+x@mail.example.co.uk", "bob@ex.io"]
    assert found(email, "user@localhost and @handle") == []


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ssn 123-45-6789", ["123-45-6789"]),
        ("ssn 000-45-6789 666-45-6789 912-45-6789 123-00-6789", []),  # never issued
        ("nino AB 12 34 56 C and QQ123456C", ["AB 12 34 56 C"]),  # QQ prefix is invalid
        ("nino GB123456A", []),
        ("sin 130 692 544", ["130 692 544"]),
        ("sin 046 454 286", []),  # 0 is never issued
        ("sin 130 692 545", []),  # Luhn fails
        ("phone 555-123-4567", []),
    ],
)
def test_national_ids(text, expected):
    assert found(national_id, text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("pay DE89370400440532013000 now", ["DE89370400440532013000"]),
        ("GB82 WEST 1234 5698 7654 32", ["GB82 WEST 1234 5698 7654 32"]),
        ("DE89 3704 0044 0532 0130 00 THEN", ["DE89 3704 0044 0532 0130 00"]),
        ("DE89370400440532013001", []),  # mod-97 fails
        ("AB12 CDEF GHIJ KLMN", []),
    ],
)
def test_iban_mod97(text, expected):
    assert found(iban, text) == expected


@pytest.mark.parametrize(
    "token",
    [
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2,
        "xoxb-123456789012-abcdefABCDEF",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "Q2hhbmdlTWUhIDEyMzQ1Njc4OTBhYmNkZWZnaGlqa2xtbm9w",
    ],
)
def test_api_keys_found(token):
    assert found(api_key, f"key {token} x") == [token]


@pytest.mark.parametrize(
    "text",
    [
        "internationalization_and_localization_settings",
        "0000000000000000000000000000000000000000000000",
        "/usr/share/doc/python3/changelog.Debian.gz",
        "short AKIA123",
    ],
)
def test_api_key_ignores_ordinary_strings(text):
    assert found(api_key, text) == []


def test_classify_names_each_span_and_fuses_overlaps():
    value = b"card 4111111111111111 mail a@b.io"
    assert classify(value, ("card", "email")) == [(5, 21, "card"), (27, 33, "email")]
    assert classify(b"nothing here", ("card", "email", "national_id", "iban", "api_key")) == []


def test_fast_patterns_and_luhn_agree_with_their_plain_forms():
    """The class-first patterns (`x(?<!yx)`) and the email search from each @ must find
    exactly what the lookbehind-first patterns did, and the table-driven Luhn must agree
    with the textbook loop."""
    import random
    import re

    from interceptor.masking import classifiers

    plain = {
        classifiers._SSN: re.compile(rb"(?<![0-9-])(?!000|666|9[0-9]{2})[0-9]{3}-(?!00)[0-9]{2}-(?!0000)[0-9]{4}"
                                     rb"(?![0-9-])"),
        classifiers._IBAN: re.compile(rb"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}"
                                      rb"(?: [A-Z0-9]{1,3})?)(?![A-Za-z0-9])"),
        classifiers._SIN: re.compile(rb"(?<![0-9-])[1-79][0-9]{2}([ -])[0-9]{3}\1[0-9]{3}(?![0-9-])"),
        classifiers._NINO: re.compile(rb"(?<![A-Za-z0-9])(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z]"
                                      rb"[A-CEGHJ-NPR-TW-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D](?![A-Za-z0-9])"),
    }
    plain_card = re.compile(rb"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
    plain_email = re.compile(rb"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}"
                             rb"(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}(?![A-Za-z0-9-])")

    def textbook_luhn(digits: bytes) -> bool:
        total = 0
        for position, char in enumerate(reversed(digits)):
            digit = char - 48
            if position % 2:
                digit = digit * 2 - 9 if digit > 4 else digit * 2
            total += digit
        return total % 10 == 0

    rng = random.Random(7)
    for _ in range(20000):
        text = bytes(rng.choice(b"0123456789 -ab.@_%+xZ") for _ in range(rng.randint(0, 40)))
        assert [m.span() for m in classifiers._CARD.finditer(text)] == [m.span() for m in plain_card.finditer(text)]
        assert classifiers.email(text) == [m.span() for m in plain_email.finditer(text)], text
        long_runs = bytes(rng.choice(b"aaaaaaaaaaaaaaaaaaaa.-@ x") for _ in range(rng.randint(0, 200)))
        assert classifiers.email(long_runs) == [m.span() for m in plain_email.finditer(long_runs)], long_runs
        digits = bytes(rng.choice(b"0123456789") for _ in range(rng.randint(1, 20)))
        assert classifiers.luhn_valid(digits) == textbook_luhn(digits)
        ids = bytes(rng.choice(b"0123456789 -ABCDEGHKNTZ9a") for _ in range(rng.randint(0, 40)))
        for fast, slow in plain.items():
            assert [m.span() for m in fast.finditer(ids)] == [m.span() for m in slow.finditer(ids)], ids
