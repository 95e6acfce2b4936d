"""Each resource's credentials checked ahead of agents: every failure shape names the resource,
the source and the fix, and never a value."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest

import interceptor.credentials_check as credentials_check
from interceptor.audit.event import AuditEvent
from interceptor.config import Settings
from interceptor.credentials_check import CredentialsCheck, check_policy, check_resource, warn_failing
from interceptor.doctor import ENV_NOTE, run_checks, verdict
from interceptor.policy.model import Policy, ResourceSpec
from interceptor.runtime import Runtime

SECRET = "S3cr3t-v4lue"


def check(protocol: str, source: dict[str, Any], run_commands: bool = True,
          options: dict[str, Any] | None = None) -> CredentialsCheck:
    resource = ResourceSpec("r1", protocol, (), source, options)
    result = asyncio.run(check_resource(resource, run_commands))
    assert result is not None
    assert SECRET not in result.detail and SECRET not in result.fix
    return result


def secret_file(tmp_path: Path, text: str, mode: int = 0o600) -> dict[str, Any]:
    path = tmp_path / "cred"
    path.write_text(text)
    path.chmod(mode)
    return {"from": "file", "path": str(path)}


def test_good_credentials_are_ok_and_name_only_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ok = check("kubernetes", secret_file(tmp_path, f"token: {SECRET}\n"))
    assert (ok.ok, ok.source, ok.detail) == (True, f"file {tmp_path / 'cred'}", "token for kubernetes")
    monkeypatch.setenv("ICPT_PG", f"svc:{SECRET}")
    ok = check("postgres", {"from": "env", "name": "ICPT_PG"})
    assert (ok.ok, ok.source, ok.detail) == (True, "env ICPT_PG", "password, user for postgres")
    assert check("http", secret_file(tmp_path, f"token: {SECRET}"), options={"token_header": "x-api-key"}).ok


def test_file_mode_and_owner(tmp_path: Path) -> None:
    loose = check("http", secret_file(tmp_path, f"token: {SECRET}\n", 0o640))
    assert not loose.ok and "mode 640" in loose.detail and f"chmod 0600 {tmp_path / 'cred'}" in loose.fix
    source = secret_file(tmp_path, f"token: {SECRET}\n")
    os.chown(source["path"], 65534, -1)
    foreign = check("http", source)
    assert not foreign.ok and "is uid 65534" in foreign.detail and "chown root:" in foreign.fix


def test_missing_file_and_env_var(tmp_path: Path) -> None:
    missing = check("mcp", {"from": "file", "path": str(tmp_path / "nope")})
    assert not missing.ok and "No such file" in missing.detail and "create" in missing.fix
    directory = check("mcp", {"from": "file", "path": str(tmp_path)})
    assert not directory.ok and "Is a directory" in directory.detail
    unset = check("postgres", {"from": "env", "name": "ICPT_UNSET_FOR_TEST"})
    assert not unset.ok and "ICPT_UNSET_FOR_TEST is not set" in unset.detail and "Environment=" in unset.fix


def test_a_bare_token_for_kubernetes_says_to_write_token(tmp_path: Path) -> None:
    bare = check("kubernetes", secret_file(tmp_path, f"{SECRET}\n"))
    assert not bare.ok and "expected a mapping" in bare.detail
    assert bare.fix.startswith("kubernetes resources take a mapping `token: THE_TOKEN`") and "write" not in bare.fix


@pytest.mark.parametrize(("protocol", "text", "detail", "fix"), [
    ("postgres", f"token: {SECRET}", "token are not used by postgres resources", "`user:` and `password:`"),
    ("postgres", f"user: svc\npasword: {SECRET}", "pasword are not used by postgres", "`user:` and `password:`"),
    ("postgres", "user: svc", "need both user and password", "postgres resources take"),
    ("postgres", f'user: svc\npassword: "{SECRET}\\0"', "NUL", "postgres resources take"),
    ("kubernetes", f"tokne: {SECRET}", "tokne are not used by kubernetes", "`token: THE_TOKEN`"),
    ("http", f"user: svc\npassword: x\ntoken: {SECRET}", "ambiguous", "http resources take"),
    ("http", f"password: {SECRET}", "password without user", "http resources take"),
    ("mcp", f"token: {SECRET}\nclient_certificate: /nonexistent.pem\nclient_key: /nonexistent.key",
     "client_certificate names a file that is missing", "mcp resources take"),
    ("http", "token: ''", "token is empty", "http resources take"),
    ("http", "{}", "no key given", "http resources take"),
    ("http", f"token: [{SECRET}]", "token is a list or mapping", "give each key one string value"),
    ("tcp", f"token: {SECRET}", "protocol tcp uses no credentials",
     "tcp resources take no credentials (remove credentials: from the resource)"),
])
def test_wrong_shape_per_protocol(tmp_path: Path, protocol: str, text: str, detail: str, fix: str) -> None:
    result = check(protocol, secret_file(tmp_path, text))
    assert not result.ok and detail in result.detail and fix in result.fix


def test_a_key_shaped_like_a_value_is_not_named(tmp_path: Path) -> None:
    result = check("http", secret_file(tmp_path, f"token: abc\n'{SECRET}/+=': x\nghp_{SECRET}: y\ntokne: z\n"))
    assert not result.ok and "key(s) tokne, 2 key(s) not shown" in result.detail


@pytest.mark.parametrize("value", [f"{SECRET}\r\n", f"{SECRET}\n", f"{SECRET}\rX", f"a\x00{SECRET}", f" {SECRET}"])
def test_a_token_with_cr_lf_or_control_characters(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("ICPT_TOKEN", '{"token": ' + repr(value).replace("'", '"') + "}")
    result = check("kubernetes", {"from": "env", "name": "ICPT_TOKEN"})
    assert not result.ok and "token is empty or holds characters a header cannot carry" in result.detail


def test_a_block_scalar_token_keeps_its_newline_and_is_refused(tmp_path: Path) -> None:
    result = check("kubernetes", secret_file(tmp_path, f"token: |\n  {SECRET}\n"))
    assert not result.ok and "cannot carry" in result.detail


def test_commands_run_only_when_asked_and_within_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    printing = {"from": "command", "argv": [sys.executable, "-c", f"print('token: {SECRET}')"]}
    skipped = check("http", printing, run_commands=False)
    assert skipped.ok and skipped.detail.startswith("not run") and skipped.source == f"command {sys.executable}"
    assert check("http", printing).detail == "token for http"
    monkeypatch.setattr(credentials_check, "COMMAND_TIMEOUT_S", 0.3)
    slow = check("http", {"from": "command", "argv": [sys.executable, "-c", "import time; time.sleep(30)"]})
    assert not slow.ok and "no answer within 0.3 s" in slow.detail and "without asking" in slow.fix
    absent = check("http", {"from": "command", "argv": ["/nonexistent/vault"]})
    assert not absent.ok and "No such file" in absent.detail


def policy(tmp_path: Path) -> Policy:
    good = secret_file(tmp_path, f"token: {SECRET}")
    return Policy("v", {"api": ResourceSpec("api", "http", (), good),
                        "db": ResourceSpec("db", "postgres", (), {"from": "env", "name": "ICPT_UNSET_FOR_TEST"}),
                        "plain": ResourceSpec("plain", "tcp", ())}, {}, ())


def test_the_policy_check_covers_each_resource_with_credentials(tmp_path: Path) -> None:
    results = asyncio.run(check_policy(policy(tmp_path), run_commands=False))
    assert [(r.resource, r.ok) for r in results] == [("api", True), ("db", False)]


def test_failures_are_logged_as_warnings_naming_resource_source_and_fix(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "interceptor.credentials_check"):
        asyncio.run(warn_failing(policy(tmp_path)))
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "resource 'db' (env ICPT_UNSET_FOR_TEST)" in message and "fix: set ICPT_UNSET_FOR_TEST" in message
    assert SECRET not in caplog.text


POLICY = """version: 1
resources:
  db: {{protocol: postgres, addresses: ["10.0.0.5:5432"], credentials: {{from: file, path: "{path}"}}}}
agents:
  bot: {{uids: [1001]}}
rules:
  - {{name: r1, effect: allow, agents: [bot], resources: [db], sql: {{kinds: [select]}}}}
"""


class Sink:
    async def write(self, event: AuditEvent) -> None:
        """Audit events are not looked at here."""


def test_the_runtime_warns_at_start_and_after_a_reload(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "db.cred"
    secret.write_text(f"token: {SECRET}\n")
    secret.chmod(0o600)
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(path=secret))
    runtime = Runtime(Settings(policy=path), tmp_path, Sink(), lambda change: None)  # type: ignore[arg-type]

    async def start_then_reload() -> None:
        await runtime.start()
        assert "token are not used by postgres" in caplog.text
        caplog.clear()
        path.write_text(POLICY.format(path=tmp_path / "gone"))
        await runtime.reload()

    with caplog.at_level(logging.WARNING, "interceptor.credentials_check"):
        asyncio.run(start_then_reload())
    assert "resource 'db'" in caplog.text and "No such file" in caplog.text and SECRET not in caplog.text
    assert runtime.snapshot.policy.resources["db"].credentials == {"from": "file", "path": str(tmp_path / "gone")}


def test_doctor_reports_each_resource_and_fails_the_verdict(tmp_path: Path) -> None:
    secret = tmp_path / "db.cred"
    secret.write_text(f"user: svc\npassword: {SECRET}\n")
    secret.chmod(0o600)
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(path=secret))
    [good] = [c for c in run_checks(None, path) if c.needed_for == "resource"]
    assert (good.name, good.ok, good.detail) == ("credentials of resource db", True,
                                                 f"file {secret}: password, user for postgres")
    secret.chmod(0o644)
    checks = run_checks(None, path)
    [bad] = [c for c in checks if c.needed_for == "resource"]
    assert not bad.ok and "mode 644" in bad.detail and "chmod 0600" in bad.fix and SECRET not in bad.detail
    ok, summary = verdict([c for c in checks if c.needed_for in ("resource", "optional")])
    assert not ok and summary.endswith("but the flows of resources whose credentials fail are refused")


def test_doctor_says_a_variable_is_looked_up_in_its_own_environment(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    env_source = "{from: env, name: ICPT_UNSET_FOR_TEST}"
    path.write_text(POLICY.format(path="x").replace('{from: file, path: "x"}', env_source))
    [unset] = [c for c in run_checks(None, path) if c.needed_for == "resource"]
    assert not unset.ok and unset.fix.endswith(ENV_NOTE) and "Environment=" in unset.fix
