"""The StartupMessage: which settings an agent may ask for, and how `options` is read."""

import pytest

from interceptor.errors import Refused
from interceptor.handlers.postgres import codec
from interceptor.handlers.postgres.startup import accept_startup, database_allowed, split_options


def startup(**params: str):
    return accept_startup(codec.StartupPacket(codec.PROTOCOL_3_0, {"user": "a", **params}))


def test_startup_checks():
    ok = accept_startup(codec.StartupPacket(codec.PROTOCOL_3_2, {"user": "a", "application_name": "x"}))
    assert (ok.user, ok.database, ok.params, ok.minor, ok.greeting) == ("a", "a", {"application_name": "x"}, 2, b"")
    newer = accept_startup(codec.StartupPacket((3 << 16) | 5, {"user": "a", "_pq_.thing": "1"}))
    assert newer.greeting == codec.negotiate_protocol_version(2, ["_pq_.thing"]) and newer.minor == 2
    with pytest.raises(Refused, match="no PostgreSQL user name"):
        accept_startup(codec.StartupPacket(codec.PROTOCOL_3_0, {"database": "app"}))
    with pytest.raises(Refused, match="replication"):
        accept_startup(codec.StartupPacket(codec.PROTOCOL_3_0, {"user": "a", "replication": "database"}))
    with pytest.raises(Refused, match="role"):
        accept_startup(codec.StartupPacket(codec.PROTOCOL_3_0, {"user": "a", "options": "-c role=x"}))


def test_database_allowance():
    assert database_allowed("app", ("app", "reports_*"), None)
    assert database_allowed("reports_2024", ("app", "reports_*"), "app")
    assert not database_allowed("postgres", ("app",), None)
    assert database_allowed("app", None, "app") and not database_allowed("other", None, "app")



@pytest.mark.parametrize("options, expected", [
    ("-c search_path=sales", [("search_path", "sales")]),
    ("-csearch_path=sales --statement-timeout=5s", [("search_path", "sales"), ("statement_timeout", "5s")]),
    (r"-c search_path=a,\ b -c application_name=x\\y", [("search_path", "a, b"), ("application_name", r"x\y")]),
])
def test_options_are_read_as_the_server_splits_them(options, expected):
    assert split_options(options) == expected


@pytest.mark.parametrize("options", ["-c role=admin", "-e", "-d 5", "-c search_path", "--session_authorization=x",
                                     "-B 100", "-c default_transaction_read_only=off"])
def test_options_that_are_not_allowed_settings_are_refused(options):
    with pytest.raises(Refused):
        startup(options=options)


def test_settings_from_options_reach_the_server_as_parameters():
    assert startup(options="-c search_path=sales,public").params == {"search_path": "sales,public"}


def test_a_setting_given_twice_in_any_case_is_refused():
    with pytest.raises(Refused, match="more than once"):
        startup(search_path="public", SEARCH_PATH="evil")
    with pytest.raises(Refused, match="more than once"):
        startup(search_path="public", options="-c search_path=evil")


@pytest.mark.parametrize("encoding", ["SJIS", "sjis", "Shift_JIS", "BIG5", "gbk", "GB18030", "JOHAB", "UHC",
                                      "win932", "Windows-936", "WIN950", "mskanji", "SHIFT_JIS_2004"])
def test_client_only_encodings_are_refused_at_startup(encoding):
    with pytest.raises(Refused, match="quote or backslash") as refused:
        startup(client_encoding=encoding)
    assert refused.value.sqlstate == "0A000"
    with pytest.raises(Refused, match="quote or backslash"):
        startup(options=f"-c client_encoding={encoding}")


@pytest.mark.parametrize("encoding", ["UTF8", "utf-8", "LATIN1", "ISO-8859-1", "WIN1252", "EUC_JP", "KOI8R"])
def test_encodings_the_enforcer_reads_are_accepted(encoding):
    assert startup(client_encoding=encoding).params == {"client_encoding": encoding}


def test_encodings_the_enforcer_cannot_read_are_refused():
    for encoding in ("MULE_INTERNAL", "EUC_TW", "no-such-encoding"):
        with pytest.raises(Refused, match="not supported"):
            startup(client_encoding=encoding)
