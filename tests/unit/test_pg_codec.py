"""PostgreSQL framing and message bodies, on bytes only."""

import pytest

from interceptor.errors import ProtocolViolation
from interceptor.handlers.postgres import codec
from interceptor.handlers.postgres.codec import INT16, INT32


def packet(body: bytes) -> bytes:
    return INT32.pack(len(body) + 4) + body


def test_startup_message_parameters_in_order():
    raw = codec.startup_message({"user": "agent", "database": "app", "application_name": "psql"})
    body, rest = codec.split_startup(raw + b"extra")
    parsed = codec.parse_startup(body)
    assert rest == b"extra"
    assert parsed == codec.StartupPacket(codec.PROTOCOL_3_0, {"user": "agent", "database": "app",
                                                              "application_name": "psql"})


def test_partial_startup_waits_for_more():
    raw = codec.startup_message({"user": "agent"})
    assert codec.split_startup(raw[:3]) is None
    assert codec.split_startup(raw[:-1]) is None


def test_ssl_and_gssenc_requests_are_recognised():
    for code in (codec.SSL_REQUEST, codec.GSSENC_REQUEST):
        body, _ = codec.split_startup(codec.special_request(code))
        assert codec.parse_startup(body) == codec.SpecialRequest(code)


@pytest.mark.parametrize("secret", [b"\x01\x02\x03\x04", bytes(range(32)), bytes(256)])
def test_cancel_request_keys_of_protocol_3_0_and_3_2(secret):
    body, _ = codec.split_startup(codec.cancel_request(4242, secret))
    assert codec.parse_startup(body) == codec.CancelPacket(4242, secret)


def test_cancel_key_longer_than_256_bytes_is_refused():
    body, _ = codec.split_startup(codec.cancel_request(1, bytes(257)))
    with pytest.raises(ProtocolViolation, match="257-byte key"):
        codec.parse_startup(body)


def test_protocol_version_2_is_refused():
    body, _ = codec.split_startup(packet(INT32.pack(2 << 16) + b"user\0x\0\0"))
    with pytest.raises(ProtocolViolation, match="unsupported frontend protocol 2.0"):
        codec.parse_startup(body)


@pytest.mark.parametrize("length, message", [(0, "invalid length 0"), (3, "invalid length 3"),
                                             (2**31 - 1, "exceeds the limit"), (-2**31, "invalid length")])
def test_bad_startup_lengths_are_errors(length, message):
    with pytest.raises(ProtocolViolation, match=message):
        codec.split_startup(INT32.pack(length) + b"\0\0\0\0")


def test_startup_parameters_must_be_terminated_and_utf8():
    with pytest.raises(ProtocolViolation, match="not NUL-terminated"):
        codec.parse_startup(INT32.pack(codec.PROTOCOL_3_0) + b"user\0agent")
    with pytest.raises(ProtocolViolation, match="not valid UTF-8"):
        codec.parse_startup(INT32.pack(codec.PROTOCOL_3_0) + b"user\0\xff\xfe\0\0")
    with pytest.raises(ProtocolViolation, match="without a value"):
        codec.parse_startup(INT32.pack(codec.PROTOCOL_3_0) + b"user\0\0")


def test_query_and_parse_bodies():
    assert codec.read_query(codec.query("SELECT 1")[5:]) == "SELECT 1"
    assert codec.read_parse(codec.parse("s1", "SELECT $1")[5:]) == codec.Parse("s1", "SELECT $1")
    with pytest.raises(ProtocolViolation, match="Query is not valid UTF-8"):
        codec.read_query(b"SELECT '\xc3\x28'\0")
    with pytest.raises(ProtocolViolation, match="unterminated"):
        codec.read_query(b"SELECT 1")


def test_bind_body_counts_parameters_and_result_formats():
    body = (b"portal\0stmt\0" + INT16.pack(1) + INT16.pack(1) + INT16.pack(3)
            + INT32.pack(2) + b"42" + INT32.pack(-1) + INT32.pack(0) + INT16.pack(2) + INT16.pack(0) + INT16.pack(1))
    assert codec.read_bind(body) == codec.Bind("portal", "stmt", 3, (0, 1))


def test_bind_with_a_parameter_overrunning_the_message_is_an_error():
    body = b"\0\0" + INT16.pack(0) + INT16.pack(1) + INT32.pack(1000) + b"ab"
    with pytest.raises(ProtocolViolation, match="overruns"):
        codec.read_bind(body)


def test_row_description_and_command_tags():
    column = b"email\0" + INT32.pack(16384) + INT16.pack(3) + INT32.pack(25) + INT16.pack(-1) + INT32.pack(-1) \
        + INT16.pack(1)
    assert codec.read_row_description(INT16.pack(1) + column) == (codec.Column("email", 16384, 3, 25, 1),)
    assert [codec.command_rows(t) for t in ("SELECT 3", "INSERT 0 12", "COPY 7", "BEGIN", "CREATE TABLE")] == \
        [3, 12, 7, None, None]


def test_command_complete_tags_are_read_from_bytes_or_a_view_alike():
    body = b"INSERT 0 12\0"
    assert codec.read_command_complete(body) == ("INSERT 0 12", 12)
    assert codec.read_command_complete(memoryview(b"x" + body)[1:]) == ("INSERT 0 12", 12)
    assert codec.read_command_complete(b"BEGIN\0") == ("BEGIN", None)


def test_error_response_fields_round_trip():
    raw = codec.error_response("42501", "permission denied", detail="rule x")
    assert raw[:1] == b"E" and INT32.unpack_from(raw, 1)[0] == len(raw) - 1
    assert codec.read_fields(raw[5:]) == {"S": "ERROR", "V": "ERROR", "C": "42501", "M": "permission denied",
                                         "D": "rule x"}


def test_describe_target_must_be_statement_or_portal():
    assert codec.read_target(b"Sname\0", "Describe") == ("S", "name")
    with pytest.raises(ProtocolViolation, match="neither 'S' nor 'P'"):
        codec.read_target(b"Xname\0", "Describe")
