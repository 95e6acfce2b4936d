"""TokenValidator against tokens forged here and keys served by a real loopback HTTP server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from interceptor.identity import IdentityConfigError, InvalidToken
from interceptor.identity.jwks import JwksPolicy
from interceptor.identity.validator import TokenValidator

AUDIENCE = "api://interceptor"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(key: Any, kid: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    return {**algorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig"}


class KeyServer:
    """Discovery + JWKS on 127.0.0.1, counting JWKS fetches; `down` makes JWKS answer 503."""

    def __init__(self) -> None:
        self.keys = [public_jwk(RSA_KEY, "rsa-1"), public_jwk(EC_KEY, "ec-1")]
        self.fetches = 0
        self.discoveries = 0
        self.down = False
        self.cache_control = "max-age=300"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                if self.path.endswith("/.well-known/openid-configuration"):
                    server.discoveries += 1
                    body = {"issuer": server.issuer, "jwks_uri": server.issuer + "/v1/keys"}
                elif self.path.endswith("/v1/keys") and not server.down:
                    server.fetches += 1
                    body = {"keys": server.keys}
                else:
                    self.send_response(503)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("cache-control", server.cache_control)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.httpd.server_address[1]}/oauth2/default"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def keys() -> Iterator[KeyServer]:
    server = KeyServer()
    yield server
    server.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def claims(issuer: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": issuer, "aud": AUDIENCE, "sub": "svc-agent", "cid": "svc-agent", "uid": "00u1",
            "scp": ["db.read", "k8s.read"], "groups": ["agents", "db-readers"], "jti": "jti-1",
            "iat": now, "exp": now + 300}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: Any = RSA_KEY, kid: str = "rsa-1", alg: str = "RS256",
         **header: Any) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid, "typ": "at+jwt", **header})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"


def validate(validator: TokenValidator, token: str) -> Any:
    return asyncio.run(validator.validate(token))


def reason_of(validator: TokenValidator, token: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        validate(validator, token)
    assert not token or token not in str(caught.value)
    return caught.value.reason


def test_valid_rsa_token_maps_okta_claims(keys: KeyServer) -> None:
    validator = TokenValidator(keys.issuer, AUDIENCE)
    payload = claims(keys.issuer)
    identity = validate(validator, sign(payload))
    assert identity.issuer == keys.issuer
    assert identity.subject == "svc-agent"
    assert identity.client_id == "svc-agent"
    assert identity.user_id == "00u1"
    assert identity.scopes == {"db.read", "k8s.read"}
    assert identity.groups == {"agents", "db-readers"}
    assert identity.token_id == "jti-1"
    assert identity.expires_at == payload["exp"]


def test_es256_scope_string_and_custom_groups_claim(keys: KeyServer) -> None:
    validator = TokenValidator(keys.issuer, AUDIENCE, groups_claim="okta_groups")
    payload = claims(keys.issuer, scp=None, scope="db.read db.write", okta_groups=["dba"])
    identity = validate(validator, sign(payload, EC_KEY, "ec-1", "ES256"))
    assert identity.scopes == {"db.read", "db.write"}
    assert identity.groups == {"dba"}


def test_rejections_name_a_specific_reason(keys: KeyServer) -> None:
    validator = TokenValidator(keys.issuer, AUDIENCE, leeway=5)
    good = claims(keys.issuer)
    now = int(time.time())
    public_pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    hs_header = {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}
    hs_input = f"{b64(json.dumps(hs_header).encode())}.{b64(json.dumps(good).encode())}"
    hs_token = f"{hs_input}.{b64(hmac.new(public_pem, hs_input.encode(), hashlib.sha256).digest())}"
    header, payload, signature = sign(good).split(".")
    tampered_payload = b64(json.dumps({**good, "groups": ["admins"]}).encode())
    cases = {
        "alg_not_allowed": [unsigned({"alg": "none", "kid": "rsa-1"}, good),
                            unsigned({"alg": "None", "kid": "rsa-1"}, good), hs_token,
                            sign(good, EC_KEY, "rsa-1", "ES256")],
        "wrong_issuer": [sign(claims("https://evil.example.com/oauth2/default"))],
        "wrong_audience": [sign(claims(keys.issuer, aud="api://other"))],
        "expired": [sign(claims(keys.issuer, iat=now - 600, exp=now - 60))],
        "not_yet_valid": [sign(claims(keys.issuer, nbf=now + 600)), sign(claims(keys.issuer, iat=now + 600))],
        "bad_signature": [f"{header}.{tampered_payload}.{signature}",
                          sign(good, OTHER_KEY, "rsa-1")],  # another issuer's key under our kid
        "unknown_kid": [sign(good, OTHER_KEY, "other-issuer-key"), sign(good, kid="")],
        "too_large": [sign(claims(keys.issuer, pad="x" * 20000))],
        "malformed": ["garbage!", "a.b.c", "", "x" * 10 + ".." + "y", f"{header}.{payload}"],
        "opaque_token": ["00Ab1cD2eF3gH4iJ5kL6mN7oP8qR9sT", sign(claims(keys.issuer.split("/oauth2")[0]))],
        "wrong_type": [sign(good, typ="id_token+jwt")],
        "missing_claim": [sign(claims(keys.issuer, sub=None))],
    }
    for reason, tokens in cases.items():
        for token in tokens:
            assert reason_of(validator, token) == reason, (reason, token[:40])


def test_only_asymmetric_algorithms_can_be_configured(keys: KeyServer) -> None:
    for algorithms in (("HS256",), ("none",), ("RS256", "HS512"), ()):
        with pytest.raises(ValueError, match="not allowed"):
            TokenValidator(keys.issuer, AUDIENCE, algorithms=algorithms)


def test_okta_org_authorization_server_is_refused_with_advice() -> None:
    with pytest.raises(IdentityConfigError, match="custom authorization server"):
        TokenValidator("https://example.okta.com", AUDIENCE)
    with pytest.raises(IdentityConfigError, match="https"):
        TokenValidator("http://idp.example.com/oauth2/default", AUDIENCE)


def test_unknown_kids_cause_one_fetch_per_cooldown(keys: KeyServer) -> None:
    clock = Clock()
    validator = TokenValidator(keys.issuer, AUDIENCE, clock=clock, jwks_policy=JwksPolicy(cooldown=30))
    strangers = [sign(claims(keys.issuer), OTHER_KEY, f"unknown-{i}") for i in range(50)]

    async def burst() -> list[BaseException | Any]:
        return await asyncio.gather(*(validator.validate(t) for t in strangers), return_exceptions=True)

    results = asyncio.run(burst())
    assert all(isinstance(r, InvalidToken) and r.reason == "unknown_kid" for r in results)
    assert keys.fetches == 1
    clock.now += 31
    assert reason_of(validator, strangers[0]) == "unknown_kid"
    assert keys.fetches == 2


def test_rotated_key_is_fetched_once_when_cooldown_allows(keys: KeyServer) -> None:
    clock = Clock()
    validator = TokenValidator(keys.issuer, AUDIENCE, clock=clock)
    assert validate(validator, sign(claims(keys.issuer))).subject == "svc-agent"
    keys.keys.insert(0, public_jwk(OTHER_KEY, "rsa-2"))
    rotated = sign(claims(keys.issuer), OTHER_KEY, "rsa-2")
    clock.now += 31  # the last fetch is older than the cooldown

    async def burst() -> list[Any]:
        return await asyncio.gather(*(validator.validate(rotated) for _ in range(20)))

    assert {i.subject for i in asyncio.run(burst())} == {"svc-agent"}
    assert keys.fetches == 2


def test_last_good_keys_survive_an_outage_within_the_bound(keys: KeyServer) -> None:
    clock = Clock()
    policy = JwksPolicy(stale_bound=600)
    validator = TokenValidator(keys.issuer, AUDIENCE, clock=clock, jwks_policy=policy)
    token = sign(claims(keys.issuer))
    validate(validator, token)
    keys.down = True
    clock.now += 300 + 500  # past max-age, within the stale bound
    assert validate(validator, token).subject == "svc-agent"
    clock.now += 200  # beyond the bound: fail closed
    assert reason_of(validator, token) == "keys_unavailable"
    keys.down = False
    clock.now += 31
    assert validate(validator, token).subject == "svc-agent"


def test_cache_control_max_age_is_honoured_within_bounds(keys: KeyServer) -> None:
    clock = Clock()
    keys.cache_control = "public, max-age=120"
    validator = TokenValidator(keys.issuer, AUDIENCE, clock=clock)
    token = sign(claims(keys.issuer))
    validate(validator, token)
    clock.now += 100
    validate(validator, token)
    assert keys.fetches == 1
    clock.now += 30
    validate(validator, token)
    assert keys.fetches == 2


def test_metadata_naming_another_issuer_is_refused_without_a_storm(keys: KeyServer) -> None:
    clock = Clock()
    validator = TokenValidator(keys.issuer + "/", AUDIENCE, clock=clock)
    token = sign(claims(keys.issuer + "/"))
    for _ in range(5):
        assert reason_of(validator, token) == "keys_unavailable"
    assert (keys.discoveries, keys.fetches) == (1, 0)
    clock.now += 31
    assert reason_of(validator, token) == "keys_unavailable"
    assert keys.discoveries == 2
