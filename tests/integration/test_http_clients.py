"""Plain HTTP clients through the kernel redirect: curl and python `requests`, run in the agent's
cgroup, call an HTTPS API at its real address and trust the host CA (curl --cacert, the bundle
`interceptor trust install` writes, requests' `verify=` and REQUESTS_CA_BUNDLE); the enforcer
judges each request by method and path, sends the API's own token upstream (never the agent's),
masks e-mail addresses in the JSON answers and refuses with a JSON body naming the rule. The
same over plain HTTP.

The API is http_setup.RecordingOrigin, a small origin server FOR TESTS in the remote host's
network namespace that answers every request with what it received (as JSON, with an e-mail
address in it) and logs every byte that reaches it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from daemon import INTERCEPTOR, Daemon
from http_setup import (
    CONTACT, Origin, agent_python, ca_file, last_json, policy_text, request_records, resource_block, run_agent,
    running_http_daemon, running_origin, write_token,
)
from netns import RemoteHost

pytestmark = pytest.mark.root

AGENT = "reporter"
TOKEN = "reports-api-token-9c1"
AGENT_TOKEN = "agents-own-token-55"
ARCHIVE_REASON = "the archive holds reports of closed customers"
RULES = [
    f"{{name: reports-read, effect: allow, agents: [{AGENT}], resources: [api, plain-api],"
    " http: {methods: [GET, HEAD], paths: ['/v1/reports/*']}}",
    f"{{name: reports-write, effect: allow, agents: [{AGENT}], resources: [api, plain-api],"
    " http: {methods: [POST], paths: ['/v1/reports/*']}}",
    f"{{name: no-archive, effect: deny, resources: [api, plain-api], reason: {ARCHIVE_REASON},"
    " http: {paths: ['/v1/reports/archive/*']}}",
    "{name: mask-contacts, effect: mask, resources: [api, plain-api], http: {paths: ['/v1/reports/*']},"
    " mask: {classifiers: [email], style: redact}}",
]


@dataclass
class Api:
    daemon: Daemon
    tls: Origin
    plain: Origin

    @property
    def ca(self) -> str:
        return str(ca_file(self.daemon))


@pytest.fixture(scope="module")
def api(remote: RemoteHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    workdir = tmp_path_factory.mktemp("clients")
    token = write_token(workdir / "api-credentials", TOKEN)
    with running_origin(workdir / "tls-origin", remote, tls=True) as tls, \
            running_origin(workdir / "plain-origin", remote, tls=False) as plain:
        resources = [resource_block("api", "http", tls.address, token, f"{{tls: {{ca: {tls.ca}}}}}"),
                     resource_block("plain-api", "http", plain.address, token)]
        with running_http_daemon(workdir, policy_text([AGENT], resources, RULES)) as daemon:
            yield Api(daemon, tls, plain)


def curl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """curl as the agent: silent, errors shown, each answer followed by a line `CODE VERSION`."""
    return run_agent(AGENT, "curl", "-sS", "-w", "\n%{http_code} %{http_version}\n", *args, env=env)


def answers(out: str) -> list[tuple[int, str, Any]]:
    """(status, HTTP version, JSON body) of each answer curl printed."""
    found: list[tuple[int, str, Any]] = []
    body: list[str] = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and len(parts[0]) == 3:
            found.append((int(parts[0]), parts[1], json.loads("\n".join(body))))
            body = []
        else:
            body.append(line)
    return found


def echoed_header(answer: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in answer["headers"] if key == name]


def test_curl_over_https_trusting_the_host_ca(api: Api) -> None:
    before = len(api.tls.requests())
    out = curl("--cacert", api.ca, "-H", f"Authorization: Bearer {AGENT_TOKEN}", "-H", "X-Forwarded-For: 1.2.3.4",
               api.tls.url("/v1/reports/1"), api.tls.url("/v1/reports/2?format=full"))
    assert out.returncode == 0, out.stderr
    [(first, version, one), (second, _, two)] = answers(out.stdout)
    assert (first, second, version) == (200, 200, "1.1")  # curl offers h2 and http/1.1: ALPN agrees on http/1.1
    assert (one["method"], one["target"], two["target"]) == ("GET", "/v1/reports/1", "/v1/reports/2?format=full")
    assert echoed_header(one, "authorization") == [f"Bearer {TOKEN}"]
    assert echoed_header(one, "x-forwarded-for") == []
    assert one["contact"] != CONTACT and CONTACT not in out.stdout
    seen = api.tls.requests()[before:]
    assert [e["target"] for e in seen] == ["/v1/reports/1", "/v1/reports/2?format=full"]
    assert AGENT_TOKEN not in json.dumps(seen)
    records = request_records(api.daemon, lambda e: e["resource"] == "api" and
                              e["operation"]["target"] in ("/v1/reports/1", "/v1/reports/2?format=full"))
    assert [(e["decision"], e["rule"]) for e in records] == [("allow", "reports-read")] * 2
    assert len({e["flow_id"] for e in records}) == 1, "curl's second request reused the kept-alive connection"
    assert all(e["outcome"]["masked"] >= 1 for e in records)


def test_curl_refuses_the_enforcers_certificate_without_the_host_ca(api: Api) -> None:
    before = len(api.tls.requests())
    out = run_agent(AGENT, "curl", "-sS", "--cacert", str(api.tls.ca), api.tls.url("/v1/reports/1"))
    assert out.returncode == 60, out  # the origin's own CA does not verify what the enforcer presents
    assert "certificate" in out.stderr
    assert api.tls.requests()[before:] == []


def test_curl_with_the_bundle_trust_install_writes(api: Api, tmp_path: Path) -> None:
    installed = subprocess.run([INTERCEPTOR, "--config", str(api.daemon.settings), "trust", "install",
                                "--root", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert installed.returncode == 0, installed.stderr
    bundle = tmp_path / "etc/ssl/certs/ca-certificates.crt"
    assert ca_file(api.daemon).read_text().strip() in bundle.read_text()
    out = curl(api.tls.url("/v1/reports/7"), env={**os.environ, "CURL_CA_BUNDLE": str(bundle)})
    assert out.returncode == 0, out.stderr
    assert [(status, body["target"]) for status, _, body in answers(out.stdout)] == [(200, "/v1/reports/7")]


def test_refusals_are_json_naming_the_rule_and_never_reach_the_api(api: Api) -> None:
    before = len(api.tls.requests())
    out = curl("--cacert", api.ca, api.tls.url("/v1/reports/archive/2019"))
    [(status, _, body)] = answers(out.stdout)
    assert status == 403
    assert body == {"error": f"permission denied by interceptor rule 'no-archive': {ARCHIVE_REASON}",
                    "rule": "no-archive"}
    deleted = curl("--cacert", api.ca, "-X", "DELETE", api.tls.url("/v1/reports/1"))
    [(status, _, body)] = answers(deleted.stdout)
    assert status == 403 and body["rule"] == "default-deny"
    dotted = curl("--cacert", api.ca, "--path-as-is", api.tls.url("/v1/reports/../reports/archive/2019"))
    [(status, _, body)] = answers(dotted.stdout)
    assert status == 400 and body["rule"] is None, body
    assert api.tls.requests()[before:] == []
    denied = request_records(api.daemon, lambda e: e["resource"] == "api", decision="deny")
    assert {"no-archive", "default-deny"} <= {e["rule"] for e in denied}


REQUESTS = """
import json, os, sys
import requests

url, ca = sys.argv[1], sys.argv[2]
out = {}
with requests.Session() as session:
    answer = session.get(url + "/v1/reports/3", headers={"Authorization": "Bearer %s"}, verify=ca)
    out["get"] = [answer.status_code, answer.json()]
    posted = session.post(url + "/v1/reports/new", json={"title": "weekly"}, verify=ca)
    out["post"] = [posted.status_code, posted.json()]
    chunked = session.post(url + "/v1/reports/streamed", data=iter([b"part one, ", b"part two"]), verify=ca)
    out["chunked"] = [chunked.status_code, chunked.json()]
    archive = session.get(url + "/v1/reports/archive/1", verify=ca)
    out["archive"] = [archive.status_code, archive.json()]
if ca and len(sys.argv) > 3:
    os.environ["REQUESTS_CA_BUNDLE"] = ca
    out["bundle"] = requests.get(url + "/v1/reports/4").status_code
    del os.environ["REQUESTS_CA_BUNDLE"]
    try:
        requests.get(url + "/v1/reports/5")
        out["certifi"] = "verified"
    except requests.exceptions.SSLError as exc:
        out["certifi"] = "SSLError"
print(json.dumps(out))
""" % AGENT_TOKEN


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_python_requests(api: Api, scheme: str) -> None:
    origin = api.tls if scheme == "https" else api.plain
    before = len(origin.requests())
    argv = [origin.url(""), api.ca, "trust-checks"] if scheme == "https" else [origin.url(""), ""]
    report = last_json(agent_python(AGENT, REQUESTS, *argv))
    status, body = report["get"]
    assert status == 200 and body["target"] == "/v1/reports/3" and body["contact"] != CONTACT
    assert echoed_header(body, "authorization") == [f"Bearer {TOKEN}"]
    assert report["post"][0] == 200 and json.loads(report["post"][1]["body"]) == {"title": "weekly"}
    assert report["chunked"][0] == 200 and report["chunked"][1]["body"] == "part one, part two"
    assert report["archive"] == [403, {"error": f"permission denied by interceptor rule 'no-archive': {ARCHIVE_REASON}",
                                       "rule": "no-archive"}]
    if scheme == "https":
        assert (report["bundle"], report["certifi"]) == (200, "SSLError")
    seen = [e["target"] for e in origin.requests()[before:]]
    assert seen[:3] == ["/v1/reports/3", "/v1/reports/new", "/v1/reports/streamed"]
    assert "/v1/reports/archive/1" not in seen and "/v1/reports/5" not in seen
    assert AGENT_TOKEN not in json.dumps(origin.requests())


def test_curl_over_plain_http(api: Api) -> None:
    before = len(api.plain.requests())
    out = curl("-H", f"Authorization: Bearer {AGENT_TOKEN}", api.plain.url("/v1/reports/9"),
               api.plain.url("/v1/reports/archive/9"), api.plain.url("/v1/reports/10"))
    assert out.returncode == 0, out.stderr
    [(ok, version, body), (denied, _, refusal), (after, _, _)] = answers(out.stdout)
    assert (ok, version, denied, after) == (200, "1.1", 403, 200)
    assert echoed_header(body, "authorization") == [f"Bearer {TOKEN}"] and body["contact"] != CONTACT
    assert refusal["rule"] == "no-archive"
    assert [e["target"] for e in api.plain.requests()[before:]] == ["/v1/reports/9", "/v1/reports/10"]
    records = request_records(api.daemon, lambda e: e["resource"] == "plain-api" and
                              e["operation"]["target"] in ("/v1/reports/9", "/v1/reports/archive/9", "/v1/reports/10"))
    assert [(e["decision"], e["rule"]) for e in records] == [
        ("allow", "reports-read"), ("deny", "no-archive"), ("allow", "reports-read")]
    assert len({e["flow_id"] for e in records}) == 1, "the connection goes on after a refusal"


def test_curl_uploads_a_large_body_after_100_continue(api: Api, tmp_path: Path) -> None:
    """curl sends `Expect: 100-continue` with a large body and waits for the 100 before the
    body: the enforcer answers it (Expect is never forwarded) and streams the body up."""
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"x" * (2 * 1024 * 1024))
    before = len(api.plain.requests())
    out = curl("-v", "--data-binary", f"@{upload}", "-H", "Content-Type: application/octet-stream",
               api.plain.url("/v1/reports/upload"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Expect: 100-continue" in out.stderr and "HTTP/1.1 100 Continue" in out.stderr
    [(status, _, body)] = answers(out.stdout)
    assert status == 200 and len(body["body"]) == 2 * 1024 * 1024
    [seen] = api.plain.requests()[before:]
    assert len(seen["body"]) == 2 * 1024 * 1024 and "expect" not in {name for name, _ in seen["headers"]}
