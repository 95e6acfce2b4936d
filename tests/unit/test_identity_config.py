"""Agent identity configuration, credential files and OAuth response parsing (no provider)."""

from __future__ import annotations

import os
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from interceptor.identity import IdentityConfigError, IdentityProviderError
from interceptor.identity.config import parse_identity_config
from interceptor.identity.http import HttpResponse
from interceptor.identity.jwks import JwksPolicy, max_age, parse_jwks
from interceptor.identity.manager import IdentityManager
from interceptor.identity.oauth import (
    ClientSecret, OAuthError, PrivateKeyJwt, parse_device_authorization, parse_token_response)

ISSUER = "https://example.okta.com/oauth2/default"
CC = {"source": "client_credentials", "issuer": ISSUER, "audience": "api://x", "client_id": "svc",
      "private_key_file": "/etc/interceptor/svc.pem", "scopes": ["db.read"]}


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def private_file(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_each_source_parses_with_defaults() -> None:
    cc = parse_identity_config("bot", CC)
    assert (cc.source, cc.scopes, cc.algorithms, cc.on_invalid) == (
        "client_credentials", ("db.read",), ("RS256", "ES256"), "deny_next")
    login = parse_identity_config("helper", {"source": "login", "issuer": ISSUER, "audience": "a",
                                             "client_id": "cli", "scopes": ["db.read"]})
    assert login.scopes == ("openid", "offline_access", "db.read")
    assert parse_identity_config("plain", None).source == "none"


@pytest.mark.parametrize(("raw", "message"), [
    ({"source": "magic"}, "identity.source 'magic' is not one of"),
    ({"source": "token_file", "issuer": ISSUER}, "needs audience, path"),
    ({**CC, "client_secret_file": "/x"}, "not both"),
    ({k: v for k, v in CC.items() if k != "private_key_file"}, "needs private_key_file"),
    ({**CC, "scopes": "db.read"}, "identity.scopes must be a list"),
    ({**CC, "leeway": 3600}, "identity.leeway"),
    ({**CC, "on_invalid": "ignore"}, "identity.on_invalid"),
    ({**CC, "token": "eyJhbGciOi"}, "unknown field(s) token"),
    ({**CC, "issuer": "https://example.okta.com"}, "custom authorization server"),
    ({**CC, "issuer": "http://idp.example.com/oauth2/default"}, "https"),
    ({"source": "token_file", "issuer": ISSUER, "audience": "a", "path": "/t", "introspect": True},
     "introspect with token_file needs client_id"),
])
def test_bad_config_names_agent_and_field(raw: dict[str, object], message: str) -> None:
    with pytest.raises(IdentityConfigError) as caught:
        parse_identity_config("bot", raw)
    assert message in str(caught.value) and "'bot'" in str(caught.value)


def test_manager_refuses_bad_config_at_construction() -> None:
    with pytest.raises(IdentityConfigError, match="private_key_file /etc/interceptor/svc.pem"):
        IdentityManager({"bot": CC})
    with pytest.raises(IdentityConfigError, match="not allowed"):
        IdentityManager({"bot": {"source": "token_file", "issuer": ISSUER, "audience": "a", "path": "/t",
                                 "algorithms": ["HS256"]}})


def test_private_key_file_must_be_private(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    loose = private_file(tmp_path / "loose.pem", pem(key), 0o644)
    with pytest.raises(IdentityConfigError, match="accessible to group or others .*chmod 600"):
        PrivateKeyJwt.from_file("svc", loose)
    with pytest.raises(IdentityConfigError, match="not an unencrypted PEM"):
        PrivateKeyJwt.from_file("svc", private_file(tmp_path / "junk.pem", b"junk"))
    with pytest.raises(IdentityConfigError, match="missing.pem"):
        PrivateKeyJwt.from_file("svc", tmp_path / "missing.pem")


def test_private_key_jwt_assertion_is_verifiable_and_short_lived(tmp_path: Path) -> None:
    for key, alg in ((rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
                     (ec.generate_private_key(ec.SECP256R1()), "ES256")):
        auth = PrivateKeyJwt.from_file("svc", private_file(tmp_path / f"{alg}.pem", pem(key)), key_id="k1")
        form, headers = auth.credentials("https://idp/oauth2/default/v1/token")
        assert headers == {} and form["client_id"] == "svc"
        assert jwt.get_unverified_header(form["client_assertion"])["kid"] == "k1"
        claims = jwt.decode(form["client_assertion"], key.public_key(), algorithms=[alg],
                            audience="https://idp/oauth2/default/v1/token")
        assert claims["iss"] == claims["sub"] == "svc" and claims["exp"] - claims["iat"] == 60
        assert "PRIVATE" not in repr(auth) and "key=" not in repr(auth)


def test_client_secret_never_shows_in_repr(tmp_path: Path) -> None:
    auth = ClientSecret.from_file("svc", private_file(tmp_path / "secret", b"s3cr3t-value\n"))
    form, headers = auth.credentials("https://idp/token")
    assert form == {} and headers["authorization"].startswith("Basic ")
    assert "s3cr3t" not in repr(auth)
    with pytest.raises(IdentityConfigError, match="is empty"):
        ClientSecret.from_file("svc", private_file(tmp_path / "empty", b"\n"))


def test_token_endpoint_answers_are_parsed_strictly() -> None:
    ok = HttpResponse(200, {}, b'{"access_token": "abc", "token_type": "Bearer", "expires_in": 3600}')
    parsed = parse_token_response("token", ok)
    assert parsed.expires_in == 3600 and "abc" not in repr(parsed)
    with pytest.raises(OAuthError) as caught:
        parse_token_response("token", HttpResponse(400, {}, b'{"error": "invalid_client"}'))
    assert caught.value.error == "invalid_client"
    for bad in (HttpResponse(200, {}, b"<html>"), HttpResponse(200, {}, b'{"token_type": "Bearer"}'),
                HttpResponse(200, {}, b'{"access_token": "x", "token_type": "mac"}'),
                HttpResponse(502, {}, b"bad gateway")):
        with pytest.raises(IdentityProviderError):
            parse_token_response("token", bad)
    with pytest.raises(IdentityProviderError, match="incomplete device authorization"):
        parse_device_authorization("device", HttpResponse(200, {}, b'{"device_code": "d"}'))


def test_jwks_documents_and_cache_headers() -> None:
    policy = JwksPolicy()
    assert max_age("public, max-age=600", policy) == 600
    assert max_age("max-age=0", policy) == policy.min_max_age
    assert max_age("no-store", policy) == policy.min_max_age
    assert max_age(None, policy) == policy.default_max_age
    assert max_age("max-age=99999999", policy) == policy.max_max_age
    keys = parse_jwks({"keys": [{"kid": "a", "kty": "RSA"}, {"kid": "b", "use": "enc"}, {"kty": "RSA"}]})
    assert list(keys) == ["a"]
    with pytest.raises(IdentityProviderError, match="private or secret"):
        parse_jwks({"keys": [{"kid": "a", "kty": "oct", "k": "c2VjcmV0"}]})
    with pytest.raises(IdentityProviderError, match="no 'keys' list"):
        parse_jwks({"keys": "nope"})


def test_open_connection_handling_is_per_agent() -> None:
    token_file = {"source": "token_file", "issuer": ISSUER, "audience": "a", "path": "/run/agent.token"}
    manager = IdentityManager({"strict": {**token_file, "on_invalid": "close"}, "lenient": token_file,
                               "plain": {"source": "none"}})
    assert [manager.on_invalid(a) for a in ("strict", "lenient", "plain")] == ["close", "deny_next", "deny_next"]
    assert manager.current("strict") is None and manager.current("nobody") is None
    assert manager.reason("strict") == "identity pending"
    assert "no identity configuration" in manager.reason("nobody")
    assert manager.validator("plain") is None and manager.validator("strict") is not None
