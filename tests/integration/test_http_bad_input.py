"""Bad HTTP input through the kernel redirect: raw sockets from the agent's cgroup send the
request smuggling shapes (Content-Length with Transfer-Encoding, two Content-Lengths, a listed
Content-Length, obs-fold, bare LF, bare CR, a Transfer-Encoding other than chunked), a
truncated and a malformed chunk, a 10 MB header, a Host that is not the TLS server name, and a
WebSocket frame flood before the upgrade's answer. Each gets a clear error (400, 421, 431, or
the close of the flow, recorded with why), nothing of it reaches the origin, another agent's
session working meanwhile is not slowed or broken, and the daemon goes on serving.

The origin is http_setup.RecordingOrigin in the remote host's network namespace: it logs every
byte it receives, so "never forwarded" is read from its log. It answers an upgrade request
only after UPGRADE_DELAY seconds, so a flood sent right after the request is early bytes.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon
from http_setup import (
    Origin, agent_python, ca_file, last_json, policy_text, request_records, resource_block, running_http_daemon,
    running_origin, start_agent, write_token,
)
from netns import RemoteHost

pytestmark = pytest.mark.root

AGENT, BYSTANDER = "fuzzer", "bystander"
UPGRADE_DELAY = 3.0
EARLY_LIMIT = 64 * 1024  # interceptor.handlers.http.session.MAX_EARLY
RULES = [
    f"{{name: reads, effect: allow, agents: [{AGENT}, {BYSTANDER}], resources: [plain, tls, side],"
    " http: {methods: [GET, POST], paths: ['/v1/*']}}",
]

# Run by the agent: argv = host, port, CA file ("" for clear text), then the cases as JSON:
# [{"name", "data" (Latin-1 text), "pause" (seconds to wait after it), "repeat" (times `body` is
# sent then), "body", "tail" (sent last), "burst" (all of it in one send), "sni", "shut" (shut the
# write side after sending)}]. Each on its own connection; what came back until the
# enforcer closed (or 10 s passed) is reported: status, body, whether it closed, errors.
RAW = """
import json, socket, ssl, sys, threading, time

host, port, ca, cases = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
out = {}
for case in cases:
    sock = socket.create_connection((host, port), timeout=10)
    if ca:
        context = ssl.create_default_context(cafile=ca)
        context.check_hostname = False
        sock = context.wrap_socket(sock, server_hostname=case.get("sni") or None)
    parts = [case["data"]] + [case.get("body", "")] * case.get("repeat", 0) + [case.get("tail", "")]
    parts = ["".join(parts)] if case.get("burst") else parts
    sent = {"bytes": 0, "error": None}

    def send():
        try:
            for index, part in enumerate(parts):
                if index == 1:
                    time.sleep(case.get("pause", 0))
                sock.sendall(part.encode("latin-1"))
                sent["bytes"] += len(part)
            if case.get("shut"):
                sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            sent["error"] = type(exc).__name__

    # an SSL socket is not read and written from two threads at once: over TLS, send first
    sender = threading.Thread(target=send)
    started, received, closed, error = time.monotonic(), b"", False, None
    if ca:
        send()
    else:
        sender.start()
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            received += chunk
    except OSError as exc:
        error = type(exc).__name__
    if not ca:
        sender.join(30)
    head, _, body = received.partition(b"\\r\\n\\r\\n")
    status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1 ") else None
    out[case["name"]] = {"status": status, "head": head.decode("latin-1"), "body": body.decode("latin-1"),
                         "closed": closed, "error": error, "sent": sent["bytes"], "send_error": sent["error"],
                         "seconds": time.monotonic() - started}
    sock.close()
print(json.dumps(out))
"""

# Run by the bystander: a keep-alive session of GETs until the file argv[2] exists.
BYSTANDING = """
import json, os, sys, time
import requests

url, stop = sys.argv[1], sys.argv[2]
statuses, slowest = [], 0.0
with requests.Session() as session:
    while not os.path.exists(stop):
        started = time.monotonic()
        statuses.append(session.get(url, timeout=10).status_code)
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.02)
print(json.dumps({"statuses": sorted(set(statuses)), "count": len(statuses), "slowest": slowest}))
"""


@dataclass
class Setup:
    daemon: Daemon
    plain: Origin
    tls: Origin
    side: Origin  # the bystander's

    def send(self, origin: Origin, cases: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        ca = str(ca_file(self.daemon)) if origin is self.tls else ""
        report: dict[str, dict[str, Any]] = last_json(agent_python(AGENT, RAW, origin.host, str(origin.port), ca,
                                                                   json.dumps(cases), timeout=120))
        return report


@pytest.fixture(scope="module")
def setup(remote: RemoteHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("bad-input")
    token = write_token(workdir / "credentials", "origin-token")
    with running_origin(workdir / "plain", remote, tls=False, upgrade_delay=UPGRADE_DELAY) as plain, \
            running_origin(workdir / "tls", remote, tls=True) as tls, \
            running_origin(workdir / "side", remote, tls=False) as side:
        # the name checked upstream is the origin's address, whatever SNI the agent sends
        tls_options = f"{{tls: {{ca: {tls.ca}, server_name: '{tls.host}'}}}}"
        resources = [resource_block("plain", "http", plain.address, token),
                     resource_block("tls", "http", tls.address, token, tls_options),
                     resource_block("side", "http", side.address, token)]
        with running_http_daemon(workdir, policy_text([AGENT, BYSTANDER], resources, RULES)) as daemon:
            yield Setup(daemon, plain, tls, side)


@pytest.fixture
def bystander(setup: Setup, tmp_path: Path) -> Iterator[None]:
    """Another agent's keep-alive session doing GETs while the test runs: every answer 200,
    none slower than a second."""
    stop = tmp_path / "stop"
    agent = start_agent(BYSTANDER, sys.executable, "-c", BYSTANDING, setup.side.url("/v1/reports/bystander"),
                        str(stop))
    time.sleep(1)
    yield
    stop.touch()
    out, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["statuses"] == [200] and report["count"] >= 10, report
    assert report["slowest"] < 1.0, report


def head(method: str, target: str, host: str, *lines: str, ending: str = "\r\n") -> str:
    return ending.join([f"{method} {target} HTTP/1.1", f"Host: {host}", *lines, "", ""])


def smuggled_requests(host: str) -> dict[str, str]:
    """Each request-smuggling shape (RFC 9112 section 11.2), with a second request behind it."""
    hidden = head("GET", "/v1/hidden", host)
    return {
        "cl_and_te": head("POST", "/v1/a", host, "Content-Length: 5", "Transfer-Encoding: chunked") + "0\r\n\r\n"
        + hidden,
        "two_content_lengths": head("POST", "/v1/a", host, "Content-Length: 5", "Content-Length: 40") + "hello"
        + hidden,
        "listed_content_length": head("POST", "/v1/a", host, "Content-Length: 5, 5") + "hello" + hidden,
        "obs_fold": head("GET", "/v1/a", host, "X-Note: one", " Transfer-Encoding: chunked") + hidden,
        "bare_lf": head("GET", "/v1/a", host, ending="\n") + hidden,
        "bare_cr": f"GET /v1/a HTTP/1.1\r\nHost: {host}\rX-Injected: 1\r\n\r\n" + hidden,
        "te_not_chunked": head("POST", "/v1/a", host, "Transfer-Encoding: gzip, chunked") + "0\r\n\r\n" + hidden,
        "te_http_1_0": f"POST /v1/a HTTP/1.0\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden,
    }


def protocol_records(daemon: Daemon, since: int) -> list[dict[str, Any]]:
    return [e for e in request_records(daemon)[since:] if e["rule"] == "http-protocol"]


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_smuggling_shapes_are_answered_400_and_never_forwarded(setup: Setup, bystander: None, tls: bool) -> None:
    origin = setup.tls if tls else setup.plain
    before = origin.received()
    marks = len(request_records(setup.daemon))
    shapes = smuggled_requests(origin.address)
    report = setup.send(origin, [{"name": name, "data": data} for name, data in shapes.items()])
    for name, answer in report.items():
        assert answer["status"] == 400, (name, answer)
        assert answer["closed"] and "connection: close" in answer["head"].lower(), (name, answer)
        assert json.loads(answer["body"])["error"], (name, answer)
        assert answer["body"].count("HTTP/1.1") == 0, "the request behind was never answered"
    assert origin.received() == before, "a smuggling shape reached the origin"
    records = protocol_records(setup.daemon, marks)
    assert len(records) == len(shapes) and {e["outcome"]["status"] for e in records} == {400}
    assert all(e["decision"] == "deny" and e["outcome"]["error"] for e in records)


def test_truncated_and_malformed_chunks(setup: Setup, bystander: None) -> None:
    origin = setup.plain
    requests_before = len(origin.requests())
    host = origin.address
    chunked = head("POST", "/v1/upload", host, "Transfer-Encoding: chunked")
    report = setup.send(origin, [
        {"name": "truncated", "data": chunked + "10\r\nonly eleven", "shut": True},
        {"name": "bad_size", "data": chunked + "zz\r\nhello\r\n0\r\n\r\n"},
        {"name": "no_chunk_end", "data": chunked + "5\r\nhelloXX0\r\n\r\n"},
    ])
    for name in ("truncated", "bad_size", "no_chunk_end"):
        answer = report[name]
        assert answer["status"] == 400 and answer["closed"], (name, answer)
        assert "malformed request body" in json.loads(answer["body"])["error"], (name, answer)
    assert origin.requests()[requests_before:] == [], "a broken body was taken for a whole request"


def test_a_10_mb_header_is_refused_431(setup: Setup, bystander: None) -> None:
    origin, before = setup.plain, setup.plain.received()
    start = f"GET /v1/big HTTP/1.1\r\nHost: {origin.address}\r\nX-Big: "
    report = setup.send(origin, [{"name": "big", "data": start, "body": "a" * 65536, "repeat": 160,
                                  "tail": "\r\n\r\n"}])
    answer = report["big"]
    assert answer["status"] == 431, answer
    assert json.loads(answer["body"])["error"] == "the request head is larger than 65536 bytes", answer
    assert answer["closed"] or answer["error"] == "ConnectionResetError", answer
    assert origin.received() == before


def test_a_host_that_is_not_the_tls_server_name_is_421(setup: Setup, bystander: None) -> None:
    origin = setup.tls
    before = origin.received()
    report = setup.send(origin, [
        {"name": "other_host", "sni": "reports.example.com", "data": head("GET", "/v1/a", "admin.example.com")},
        {"name": "same_host", "sni": "reports.example.com", "data": head("GET", "/v1/a", "reports.example.com",
                                                                         "Connection: close")},
    ])
    assert report["other_host"]["status"] == 421, report["other_host"]
    assert report["same_host"]["status"] == 200, report["same_host"]
    assert [e["target"] for e in origin.requests() if e["headers"][0][1] == "reports.example.com"] == ["/v1/a"]
    assert origin.received() > before  # only the request whose Host is the SNI


def websocket_frame(payload: int) -> str:
    """A masked binary WebSocket frame (RFC 6455 section 5.2) of `payload` bytes, as Latin-1."""
    frame = bytes([0x82, 0xFF]) + payload.to_bytes(8, "big") + b"\x00\x00\x00\x00" + b"f" * payload
    return frame.decode("latin-1")


def flood(setup: Setup, pause: float, burst: bool) -> None:
    """An upgrade request, then (after `pause` seconds) 1 MiB of WebSocket frames before the
    origin's 101: the enforcer keeps at most EARLY_LIMIT bytes, then closes the flow with an
    error; the origin gets the request head and nothing of the frames."""
    origin = setup.plain
    marks = len(request_records(setup.daemon))
    upgrade = head("GET", "/v1/stream", origin.address, "Connection: Upgrade", "Upgrade: websocket",
                   "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
    mark = len(origin.recorder.entries("data"))
    report = setup.send(origin, [{"name": "flood", "data": upgrade, "pause": pause, "burst": burst,
                                  "body": websocket_frame(64 * 1024), "repeat": 16}])
    answer = report["flood"]
    time.sleep(UPGRADE_DELAY + 0.5)  # had the flow stayed open, the origin's 101 would have come by now
    received = origin.recorder.entries("data")[mark:]
    assert answer["status"] is None and (answer["closed"] or answer["error"]), answer  # no 101: closed
    assert answer["seconds"] < UPGRADE_DELAY, "closed at the flood, not after the origin's answer"
    frames = sum(entry["text"].count("\x82\xff") for entry in received)
    assert frames == 0 and sum(entry["size"] for entry in received) < 1024, f"{frames} frames reached the origin"
    [record] = [e for e in request_records(setup.daemon)[marks:] if e["operation"]["target"] == "/v1/stream"]
    assert f"more than {EARLY_LIMIT} bytes after an upgrade request" in record["outcome"]["error"], record
    assert "upgrade" not in record["outcome"], record


def test_a_websocket_frame_flood_after_the_upgrade_request_closes_the_flow(setup: Setup, bystander: None) -> None:
    flood(setup, pause=0.5, burst=False)


def test_a_websocket_frame_flood_sent_with_the_upgrade_request_closes_the_flow(setup: Setup,
                                                                                bystander: None) -> None:
    """The request and the frames in one send: the enforcer reads them together (before the
    session starts, while it dials the origin), and the limit holds just the same."""
    flood(setup, pause=0, burst=True)


def test_connection_records_of_bad_requests_name_the_clients_fault(setup: Setup) -> None:
    """A flow the agent ended with a bad request is the client's fault, and so denied, in its
    connection record (what `interceptor audit search` filters by), not an unexplained error."""
    shapes = smuggled_requests(setup.plain.address)
    setup.send(setup.plain, [{"name": "cl_and_te", "data": shapes["cl_and_te"]}])
    record = [e for e in setup.daemon.audit_events("connection")
              if "Content-Length and Transfer-Encoding" in (e["outcome"].get("error") or "")][-1]
    assert (record["decision"], record["outcome"]["fault"]) == ("deny", "client"), record


def test_the_daemon_still_serves_after_the_bad_input(setup: Setup) -> None:
    """And well-formed requests pipelined in one send are each answered, in order."""
    assert setup.daemon.call("status")
    address = setup.plain.address
    report = setup.send(setup.plain, [{"name": "fine", "data": head("GET", "/v1/first", address) + head(
        "POST", "/v1/second", address, "Content-Length: 4") + "body" + head("GET", "/v1/third", address,
                                                                            "Connection: close")}])
    answer = report["fine"]
    assert answer["status"] == 200 and answer["closed"], answer
    assert answer["body"].count("HTTP/1.1 200 ") == 2, answer
    targets = re.findall(r'"target": "([^"]*)"', answer["body"])
    assert targets == ["/v1/first", "/v1/second", "/v1/third"], answer["body"]
