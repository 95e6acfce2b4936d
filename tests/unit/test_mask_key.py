"""The key of mask style hash: made once per host, refused when others could read it, and
passed to every masker, so a value masks to the same keyed digest over HTTP and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from interceptor.decision import Decision, MaskSpec, Verdict
from interceptor.errors import MaskingError
from interceptor.handlers.http.dialect import RequestHead, ResponseHead
from interceptor.handlers.http.kubernetes import HANDLER as KUBERNETES
from interceptor.handlers.http.plain import PlainDialect
from interceptor.handlers.postgres.codec import Column
from interceptor.handlers.postgres.masks import Origin, mask_factory
from interceptor.masking.key import KEY_BYTES, MaskKeyError, open_mask_key
from interceptor.operations import HttpRequest

KEY, OTHER = b"k" * KEY_BYTES, b"o" * KEY_BYTES
CARD = b"4111 1111 1111 1111"
JSON = (("content-type", "application/json"),)


def test_the_host_key_is_made_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "mask.key"
    key = open_mask_key(path, create=True)
    info = path.stat()
    assert len(key) == KEY_BYTES and key != bytes(KEY_BYTES)
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
    assert open_mask_key(path, create=True) == key  # a restart loads it, never replaces it
    assert open_mask_key(path, create=False) == key
    assert [p.name for p in tmp_path.iterdir()] == ["mask.key"]  # no temporary left


def test_processes_racing_to_make_it_end_up_with_one_key(tmp_path: Path) -> None:
    path = tmp_path / "mask.key"
    start = threading.Barrier(16)

    def make() -> bytes:
        start.wait()
        return open_mask_key(path, create=True)

    with ThreadPoolExecutor(16) as pool:
        keys = set(pool.map(lambda _: make(), range(16)))
    assert keys == {path.read_bytes()}
    assert [p.name for p in tmp_path.iterdir()] == ["mask.key"]


def test_a_named_key_is_never_made(tmp_path: Path) -> None:
    path = tmp_path / "fleet.key"
    with pytest.raises(MaskKeyError, match=rf"{path} \(masking.hash_key_file\) does not exist: make it once with "
                                           rf"`head -c {KEY_BYTES} /dev/urandom"):
        open_mask_key(path, create=False)
    assert not path.exists()
    path.write_bytes(KEY + b"more")
    path.chmod(0o600)
    assert open_mask_key(path, create=False) == KEY + b"more"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o602])
def test_a_key_open_to_others_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "mask.key"
    open_mask_key(path, create=True)
    path.chmod(mode)
    with pytest.raises(MaskKeyError, match=rf"has mode {mode:04o}: it must be readable by its owner only.*chmod 0600 "
                                           rf"{path}"):
        open_mask_key(path, create=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_key_of_another_user_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "mask.key"
    open_mask_key(path, create=True)
    os.chown(path, 65534, -1)
    with pytest.raises(MaskKeyError, match=rf"is owned by uid 65534, not 0 \(this process\): chown 0 {path}"):
        open_mask_key(path, create=True)


def test_a_symlink_a_directory_and_a_short_key_are_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    real.write_bytes(KEY)
    real.chmod(0o600)
    link = tmp_path / "mask.key"
    link.symlink_to(real)
    with pytest.raises(MaskKeyError, match="is a symlink"):
        open_mask_key(link, create=True)
    assert link.is_symlink()  # not replaced by a new key
    directory = tmp_path / "dir.key"
    directory.mkdir(mode=0o700)
    with pytest.raises(MaskKeyError, match="is not a regular file"):
        open_mask_key(directory, create=True)
    real.write_bytes(KEY[:-1])
    with pytest.raises(MaskKeyError, match=f"holds {KEY_BYTES - 1} bytes, fewer than {KEY_BYTES}"):
        open_mask_key(real, create=False)


def test_a_key_that_cannot_be_made_says_so(tmp_path: Path) -> None:
    with pytest.raises(MaskKeyError, match="cannot create mask key .*No such file or directory"):
        open_mask_key(tmp_path / "missing" / "mask.key", create=True)


HASH = MaskSpec(columns=("public.customers.card",), style="hash", rule="hash-cards", paths=("card",))


def through_http(dialect: object, document: dict[str, object]) -> object:
    head = RequestHead("GET", "/v1/customers/1", "/v1/customers/1", (), (), "api.example.com")
    operation = HttpRequest("GET", "/v1/customers/1", (), "api.example.com")
    body = dialect.response_filter(head, operation, Decision(Verdict.ALLOW, "read", masks=(HASH,)),  # type: ignore[attr-defined]
                                   ResponseHead(200, JSON))
    assert body.feed(orjson.dumps(document)) == b""
    return orjson.loads(body.end())


def through_postgres(key: bytes, value: bytes) -> bytes | None:
    column = Column("card", 16400, 1, 25, 0)  # text, text format
    mask = mask_factory(key)((HASH,), (column,), (Origin(column="public.customers.card"),), "utf-8")
    assert mask is not None
    body = bytes(mask(memoryview(struct.pack("!hi", 1, len(value)) + value)))
    (length,) = struct.unpack_from("!i", body, 2)
    return None if length < 0 else body[6:6 + length]


def digest(key: bytes, value: bytes) -> str:
    return hmac.new(key, value, hashlib.sha256).hexdigest()[:16]


def test_a_value_masks_to_the_same_keyed_digest_over_http_and_postgres() -> None:
    http = through_http(PlainDialect(KEY), {"card": CARD.decode(), "name": "Ada"})
    assert http == {"card": digest(KEY, CARD), "name": "Ada"}
    assert through_postgres(KEY, CARD) == digest(KEY, CARD).encode()
    assert through_http(PlainDialect(KEY), {"card": CARD.decode()}) == {"card": digest(KEY, CARD)}  # stable
    kube = KUBERNETES.dialect_factory(SimpleNamespace(mask_key=KEY))  # type: ignore[arg-type]
    assert through_http(kube, {"items": [{"card": CARD.decode()}]}) == {"items": [{"card": digest(KEY, CARD)}]}


def test_another_key_gives_other_digests() -> None:
    assert through_postgres(OTHER, CARD) == digest(OTHER, CARD).encode() != through_postgres(KEY, CARD)
    assert through_http(PlainDialect(OTHER), {"card": CARD.decode()}) != {"card": digest(KEY, CARD)}
    assert through_postgres(KEY, b"4111 1111 1111 1112") != through_postgres(KEY, CARD)


def test_without_a_key_hash_is_withheld_and_other_styles_work() -> None:
    with pytest.raises(MaskingError, match="mask style 'hash' needs a key, which this flow was not given"):
        through_http(PlainDialect(), {"card": CARD.decode()})
    with pytest.raises(MaskingError, match="mask style 'hash' needs a key, which this flow was not given"):
        through_postgres(b"", CARD)
    redact = MaskSpec(style="redact", rule="r", paths=("card",))
    head = RequestHead("GET", "/", "/", (), (), "h")
    body = PlainDialect().response_filter(head, HttpRequest("GET", "/", (), "h"),
                                          Decision(Verdict.ALLOW, "read", masks=(redact,)), ResponseHead(200, JSON))
    assert body is not None and body.feed(b'{"card": "x"}') == b"" and orjson.loads(body.end()) == {"card": "****"}
