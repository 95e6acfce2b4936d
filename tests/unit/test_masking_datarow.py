"""ColumnMasker styles and DataRow rewriting, driven directly (sans-IO)."""

import struct

import pytest

from interceptor.decision import MaskSpec
from interceptor.errors import MaskingError
from interceptor.masking import ColumnMasker, mask_datarow
from interceptor.masking.bench import run as bench_run

KEY = b"test-key"


def datarow(*values: bytes | None) -> bytes:
    body = struct.pack("!h", len(values))
    for value in values:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return body


def fields(body: bytes) -> list[bytes | None]:
    (count,) = struct.unpack_from("!h", body, 0)
    position, out = 2, []
    for _ in range(count):
        (length,) = struct.unpack_from("!i", body, position)
        position += 4
        out.append(None if length == -1 else body[position : position + length])
        position += max(length, 0)
    assert position == len(body), "DataRow has trailing bytes"
    return out


def test_whole_value_styles():
    assert ColumnMasker("redact").mask(b"secret value") == b"****"
    assert ColumnMasker("null").mask(b"secret value") is None
    assert ColumnMasker("partial").mask(b"ada@example.com") == b"a***@example.com"
    assert ColumnMasker("partial").mask("Zoë Smith-Jones".encode()) == "****ones".encode()
    assert ColumnMasker("partial").mask(b"short") == b"****"


@pytest.mark.parametrize("value", [
    b'(1,Ada,ada@example.com,"4111 1111 1111 1111")',  # a whole row as text (c::text, select c)
    b'{"email": "ada@example.com", "card_number": "4111 1111 1111 1111"}',  # row_to_json(c)
    b"ada@example.com 4111 1111 1111 1111",
])
def test_partial_keeps_a_domain_only_for_a_value_that_is_one_email(value):
    masked = ColumnMasker("partial").mask(value)
    assert b"4111" not in masked and b"example.com" not in masked and len(masked) == 8


def test_hash_is_keyed_stable_and_joinable():
    hashed = ColumnMasker("hash", key=KEY).mask(b"ada@example.com")
    assert hashed == ColumnMasker("hash", key=KEY).mask(memoryview(b"ada@example.com"))
    assert len(hashed) == 16 and b"ada" not in hashed
    assert hashed != ColumnMasker("hash", key=b"other").mask(b"ada@example.com")
    assert hashed != ColumnMasker("hash", key=KEY).mask(b"bob@example.com")


def test_classifier_spans_are_masked_and_the_rest_kept():
    text = b"paid 4111 1111 1111 1111 by ada@example.com"
    assert ColumnMasker("redact", ("card", "email")).mask(text) == b"paid **** by ****"
    assert ColumnMasker("partial", ("card", "email")).mask(text) == b"paid **** **** **** 1111 by a***@example.com"
    assert ColumnMasker("null", ("card",)).mask(text) is None
    assert ColumnMasker("null", ("card",)).mask(b"no card here") == b"no card here"


def test_hash_of_span_ignores_separators():
    masker = ColumnMasker("hash", ("card",), key=KEY)
    assert masker.mask(b"4111 1111 1111 1111") == masker.mask(b"4111-1111-1111-1111")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"style": "blur"}, "unknown mask style 'blur'"),
        ({"style": "redact", "classifiers": ("card", "dna")}, "unknown classifier(s) dna"),
        ({"style": "hash"}, "needs a key"),
    ],
)
def test_bad_masker_config_is_a_clear_error(kwargs, message):
    with pytest.raises(MaskingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ColumnMasker(**kwargs)


def test_partial_on_invalid_utf8_fails_closed():
    with pytest.raises(MaskingError, match="not UTF-8"):
        ColumnMasker("partial").mask(b"\xff\xfe secret")


def test_binary_formats_only_where_safe():
    text_binary = ColumnMasker.for_column(MaskSpec(classifiers=("email",), style="partial"), whole=False, type_oid=1043, format_code=1)
    assert text_binary.binary and text_binary.mask(b"to bob@ex.io") == b"to b***@ex.io"
    int_null = ColumnMasker.for_column(MaskSpec(style="null"), whole=True, type_oid=23, format_code=1)
    assert int_null.mask(b"\x00\x00\x00\x07") is None
    with pytest.raises(MaskingError, match="type oid 23 with style 'redact'"):
        ColumnMasker.for_column(MaskSpec(style="redact", rule="r1"), whole=True, type_oid=23, format_code=1)
    with pytest.raises(MaskingError, match="only style 'null'"):
        ColumnMasker.for_column(MaskSpec(classifiers=("card",), style="null"), whole=False, type_oid=1700, format_code=1)
    whole_text = ColumnMasker.for_column(MaskSpec(classifiers=("card",), style="redact"), whole=True, type_oid=23, format_code=0)
    assert whole_text.classifiers == () and whole_text.mask(b"42") == b"****"


def test_datarow_rewrites_only_masked_fields():
    row = datarow(b"1", b"ada@example.com", None, b"4111111111111111", b"tail value")
    masked = mask_datarow(row, {1: ColumnMasker("partial"), 2: ColumnMasker("redact"), 3: ColumnMasker("null")})
    assert fields(masked) == [b"1", b"a***@example.com", None, None, b"tail value"]


def test_datarow_without_maskers_is_the_same_object():
    row = datarow(b"a", b"b")
    assert mask_datarow(row, {}) is row
    assert mask_datarow(row, {0: ColumnMasker("partial", ("card",))}) == row


def test_datarow_mask_of_first_and_last_field():
    row = datarow(b"first secret", b"keep", b"last secret")
    masked = mask_datarow(row, {0: ColumnMasker("redact"), 2: ColumnMasker("hash", key=KEY)})
    assert fields(masked) == [b"****", b"keep", ColumnMasker("hash", key=KEY).mask(b"last secret")]


@pytest.mark.parametrize(
    "body, message",
    [
        (b"\x00", "no field count"),
        (struct.pack("!h", 2) + struct.pack("!i", 1) + b"a", "truncated in the length of field 1"),
        (struct.pack("!h", 2) + struct.pack("!i", 9) + b"abc", "field 0 has length 9"),
        (struct.pack("!h", 2) + struct.pack("!i", -5), "field 0 has length -5"),
        (datarow(b"only"), "1 fields but masking was resolved for field 1"),
    ],
)
def test_malformed_datarow_fails_closed(body, message):
    with pytest.raises(MaskingError, match=message):
        mask_datarow(body, {1: ColumnMasker("redact")})


def test_bench_reports_every_case():
    results = bench_run(0.07)
    assert [r["case"] for r in results][0] == "passthrough (no masked column)"
    assert any(r["classifiers"] for r in results) and any(not r["classifiers"] for r in results)
    assert all(r["rows"] > 0 and r["mb_per_s"] > 0 for r in results)


@pytest.mark.parametrize("value, masked", [
    (b"4111 1111 1111 1111", b"**** **** **** 1111"),
    (b"3400 0000 0000 009", b"**** **** ***0 009"),  # 15 digits: still the last four digits
    (b"4111-1111-1111-1111", b"****-****-****-1111"),
    (b"4111111111111111", b"************1111"),
])
def test_partial_keeps_the_last_four_digits_of_a_grouped_number(value, masked):
    assert ColumnMasker("partial").mask(value) == masked
