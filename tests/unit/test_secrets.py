import asyncio
import sys

import pytest

from interceptor.secrets import SecretError, SecretShapeError, resolve_credentials


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


def from_file(tmp_path, text):
    path = tmp_path / "db"
    path.write_text(text)
    path.chmod(0o600)
    return {"from": "file", "path": str(path)}


def test_values_are_taken_as_written(tmp_path):
    resolved = resolve(from_file(tmp_path, "user: no\npassword: 0123\ndatabase: 1e3\n"))
    assert resolved == {"user": "no", "password": "0123", "database": "1e3"}


def test_a_value_that_is_not_a_string_is_a_shape_error(tmp_path):
    with pytest.raises(SecretShapeError) as err:
        resolve(from_file(tmp_path, "user: svc\npassword: [topsecret]\n"))
    assert "password is a list or mapping" in str(err.value) and "topsecret" not in str(err.value)


def test_a_bare_token_is_a_shape_error_with_a_fix(monkeypatch):
    monkeypatch.setenv("ICPT_TEST_CRED", "topsecret")
    with pytest.raises(SecretShapeError) as err:
        resolve({"from": "env", "name": "ICPT_TEST_CRED"})
    assert "token:" in err.value.fix and "topsecret" not in str(err.value) + err.value.fix


def test_every_failure_carries_a_fix(tmp_path):
    unreadable = {"from": "file", "path": str(tmp_path)}
    for source, fix in ((unreadable, "UTF-8 text file root can read"),
                        ({"from": "file", "path": str(tmp_path / "none")}, "create"),
                        ({"from": "env", "name": "ICPT_MISSING"}, "systemd"),
                        ({"from": "command", "argv": ["/nonexistent/vault"]}, "install /nonexistent/vault"),
                        ({"from": "vault"}, "file, env or command"), (None, "add credentials:")):
        with pytest.raises(SecretError) as err:
            resolve(source)
        assert fix in err.value.fix


def test_a_command_past_its_timeout_is_killed():
    argv = [sys.executable, "-c", "import time; time.sleep(30)"]
    with pytest.raises(SecretError, match="no answer within 0.2 s"):
        asyncio.run(resolve_credentials({"from": "command", "argv": argv}, timeout=0.2))


def test_a_command_cannot_read_the_daemon_s_input():
    argv = [sys.executable, "-c", "import sys; print('token: ' + (sys.stdin.read() or 'none'))"]
    assert resolve({"from": "command", "argv": argv}) == {"token": "none"}
