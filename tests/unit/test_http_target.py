"""parse_target: a request-target read once, or refused when servers could read it differently."""

from __future__ import annotations

import pytest

from interceptor.errors import ClientProtocolError
from interceptor.handlers.http.target import Target, parse_target, same_host, split_host


@pytest.mark.parametrize(("target", "path", "query"), [
    ("/", "/", ()),
    ("/api/v1/pods", "/api/v1/pods", ()),
    ("/api/", "/api/", ()),  # one trailing slash: kept as written
    ("/a%20b/%C3%A9", "/a b/é", ()),  # decoded once, as UTF-8
    ("/a%3Bb", "/a;b", ()),  # an encoded ';' is data
    ("/a?x=1&y=2&x=3", "/a", (("x", "1"), ("y", "2"), ("x", "3"))),  # order and duplicates kept
    ("/a?q=a+b%2Bc&flag&=v&&", "/a", (("q", "a b+c"), ("flag", ""), ("", "v"))),
    ("/a?labelSelector=app%3Dweb%2Cenv%21%3Dprod", "/a", (("labelSelector", "app=web,env!=prod"),)),
    ("/a?", "/a", ()),
    ("/%2e%2ehidden", "/..hidden", ()),  # not a dot segment: more than the dots
])
def test_an_origin_form_target_is_read_once(target: str, path: str, query: tuple[tuple[str, str], ...]) -> None:
    assert parse_target("GET", target) == Target(path, query, target)


def test_an_absolute_form_target_gives_its_authority_without_a_default_port() -> None:
    assert parse_target("GET", "HTTP://Example.com:80/x?a=1") == Target("/x", (("a", "1"),), "/x?a=1", "Example.com")
    assert parse_target("GET", "https://example.com:8443") == Target("/", (), "/", "example.com:8443")
    assert parse_target("GET", "https://[::1]:443?a") == Target("/", (("a", ""),), "/?a", "[::1]")


def test_the_asterisk_form_is_only_for_options() -> None:
    assert parse_target("OPTIONS", "*") == Target("*", (), "*")
    with pytest.raises(ClientProtocolError, match="only for OPTIONS"):
        parse_target("GET", "*")


@pytest.mark.parametrize(("target", "says"), [
    ("/a/../b", "dot segment"),
    ("/a/./b", "dot segment"),
    ("/a/..", "dot segment"),
    ("/a/%2e%2E/b", "dot segment"),
    ("/a/.%2e", "dot segment"),
    ("/a/%2e", "dot segment"),
    ("/a//b", "empty segment"),
    ("//a", "empty segment"),
    ("/a%2Fb", "encoded '/'"),
    ("/a%2fb", "encoded '/'"),
    ("/a%5Cb", "encoded '\\'"),
    ("/a\\b", "backslash"),
    ("/a%zzb", "not followed by two hex digits"),
    ("/a%2", "not followed by two hex digits"),
    ("/a%00b", "control character"),
    ("/a%0d%0ab", "control character"),
    ("/a%252e%252e/b", "double encoding"),
    ("/a%ffb", "not UTF-8"),
    ("/a;jsessionid=1/../admin", "path parameters"),
    ("/admin;x=y", "path parameters"),
    ("/a#frag", "fragment"),
    ("/a?x=1;y=2", "query holds ';'"),
    ("/a?x=%zz", "not followed by two hex digits"),
    ("/a?x=%ff", "not UTF-8"),
    ("/a?x=%00", "control character"),
    ("/a b", "control character, a space or a non-ASCII byte"),
    ("/a\x01", "control character, a space or a non-ASCII byte"),
    ("/\u00e9", "control character, a space or a non-ASCII byte"),
    ("", "control character, a space or a non-ASCII byte"),
    ("a/b", "must start with '/'"),
    ("http:///x", "no authority"),
    ("http://user@host/x", "userinfo"),
])
def test_a_target_servers_could_read_differently_is_refused(target: str, says: str) -> None:
    with pytest.raises(ClientProtocolError) as refused:
        parse_target("GET", target)
    assert says in str(refused.value)


def test_connect_is_not_supported() -> None:
    with pytest.raises(ClientProtocolError, match="CONNECT is not supported"):
        parse_target("CONNECT", "example.com:443")


def test_hosts_compare_without_case_port_or_trailing_dot() -> None:
    assert same_host("API.example.com:443", "api.example.com.")
    assert same_host("[::1]:8443", "[::1]")
    assert not same_host("api.example.com", "api.example.com.evil")
    assert split_host("[::1]:80") == ("[::1]", "80")
    assert split_host("example.com") == ("example.com", None)
    with pytest.raises(ClientProtocolError, match="malformed host"):
        split_host("[::1")
