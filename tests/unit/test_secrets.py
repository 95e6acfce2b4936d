import asyncio
import sys

import pytest

from interceptor.secrets import SecretError, resolve_credentials


def resolve(source):
    return asyncio.run(resolve_credentials(source))


def test_file_mapping_and_line_forms(tmp_path):
    mapping = tmp_path / "db"
    mapping.write_text("user: svc\npassword: 's3cr:et'\n")
    mapping.chmod(0o600)
    assert resolve({"from": "file", "path": str(mapping)}) == {"user": "svc", "password": "s3cr:et"}
    line = tmp_path / "line"
    line.write_text("svc:pa:ss\n")
    line.chmod(0o600)
    assert resolve({"from": "file", "path": str(line)}) == {"user": "svc", "password": "pa:ss"}


def test_file_readable_by_others_is_refused_without_leaking(tmp_path):
    path = tmp_path / "db"
    path.write_text("user: svc\npassword: topsecret\n")
    path.chmod(0o644)
    with pytest.raises(SecretError) as err:
        resolve({"from": "file", "path": str(path)})
    assert "mode 644" in str(err.value) and "topsecret" not in str(err.value)


def test_env_and_command(monkeypatch):
    monkeypatch.setenv("ICPT_TEST_CRED", '{"user": "u", "password": "p"}')
    assert resolve({"from": "env", "name": "ICPT_TEST_CRED"}) == {"user": "u", "password": "p"}
    with pytest.raises(SecretError, match="ICPT_MISSING is not set"):
        resolve({"from": "env", "name": "ICPT_MISSING"})
    out = resolve({"from": "command", "argv": [sys.executable, "-c", "print('{\"user\": \"c\", \"password\": \"d\"}')"]})
    assert out == {"user": "c", "password": "d"}
    with pytest.raises(SecretError, match="exited with status 3"):
        resolve({"from": "command", "argv": [sys.executable, "-c", "import sys; print('x:y'); sys.exit(3)"]})


def test_unknown_or_missing_source():
    with pytest.raises(SecretError, match="names no credentials"):
        resolve(None)
    with pytest.raises(SecretError, match="unknown credentials source 'vault'"):
        resolve({"from": "vault"})
