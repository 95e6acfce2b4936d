"""The Kubernetes dialect (interceptor.handlers.http.kubernetes): the operation from a request
head, Accept rewritten to JSON, refusals as Status objects kubectl prints, and the response
filters: whole documents (an object, a list, a Table) and watch streams split anywhere,
masked event by event; protobuf, YAML and gzip bodies withheld when masks apply."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import socket
from collections.abc import Callable
from typing import Any, TypeVar

import kubernetes
import orjson
import pytest

from conversation import Judging
from interceptor.audit.event import AuditEvent
from interceptor.decision import Decision, MaskSpec, Verdict
from interceptor.enforcer.judge import FlowJudge
from interceptor.errors import ClientProtocolError, MaskingError
from interceptor.flow import Endpoint, FlowContext, ProcessInfo
from interceptor.handlers.base import Services
from interceptor.handlers.commands import Record, Send, Side
from interceptor.handlers.http.dialect import BodyFilter, RequestHead, ResponseHead
from interceptor.handlers.http.kubernetes import (
    HANDLER, KubernetesDialect, LogLineMask, WatchEventMask, json_accept, rooted, status_object,
)
from interceptor.handlers.http.session import HttpSession
from interceptor.masking.json_paths import JsonMask
from interceptor.operations import KubeRequest, Request, Subject
from interceptor.policy import PolicyEngine, load_policy_text
from interceptor.policy.kube_rules import LAST_APPLIED, SECRET_KIND_PATHS, SECRET_RULE, SECRETS_REQUEST_PATHS
from kube_fixture import KubeApi, kubeapi_fixture  # noqa: F401 (the kubeapi fixture)
from test_http_handler import Sink

T = TypeVar("T")

DIALECT = KubernetesDialect()
JSON_HEADERS = (("content-type", "application/json"),)


def head(method: str, target: str, headers: tuple[tuple[str, str], ...] = ()) -> RequestHead:
    path = target.partition("?")[0]
    return RequestHead(method, target, path, (), headers, "k8s.example.com")


def secret(name: str = "db") -> dict[str, Any]:
    return {"kind": "Secret", "apiVersion": "v1",
            "metadata": {"name": name, "annotations": {LAST_APPLIED: '{"data":{"p":"aHVudGVyMg=="}}'}},
            "data": {"p": base64.b64encode(b"hunter2").decode()}, "stringData": {"q": "plain"}}


def allowed(*paths: tuple[str, ...], rule: str = SECRET_RULE) -> Decision:
    return Decision(Verdict.ALLOW, "r", masks=tuple(MaskSpec(paths=p, rule=rule) for p in paths))


def body_filter(target: str, decision: Decision, content_type: str = "application/json",
                extra: tuple[tuple[str, str], ...] = ()) -> BodyFilter:
    request = head("GET", target)
    found = DIALECT.response_filter(request, DIALECT.operation(request, b""), decision,
                                    ResponseHead(200, (("content-type", content_type), *extra)))
    assert found is not None
    return found


def run(flt: BodyFilter, pieces: list[bytes]) -> bytes:
    return b"".join(flt.feed(piece) for piece in pieces) + flt.end()


def assert_masked(obj: dict[str, Any]) -> None:
    assert base64.b64decode(obj["data"]["p"]) == b"****"
    assert obj["stringData"] == {"q": "****"}
    assert obj["metadata"]["annotations"][LAST_APPLIED] == "****"


def test_the_handler_serves_kubernetes() -> None:
    assert HANDLER.protocol == "kubernetes"
    assert DIALECT.body_limit(head("POST", "/api/v1/namespaces/a/pods")) == 0


def test_operation_reads_the_raw_query_as_the_server_does() -> None:
    request = head("GET", "/api/v1/namespaces/prod/secrets?fieldSelector=metadata.name%3Ddb&watch=1")
    assert DIALECT.operation(request, b"") == KubeRequest(
        "watch", "/api/v1/namespaces/prod/secrets", True, "", "v1", "secrets", "", "prod", "db",
        field_selector="metadata.name=db")
    with pytest.raises(ClientProtocolError):
        DIALECT.operation(head("OPTIONS", "/api/v1/pods"), b"")
    assert DIALECT.audit_operation(DIALECT.operation(head("GET", "/version"), b"")) == {
        "kind": "kubernetes", "verb": "get", "path": "/version"}


@pytest.mark.parametrize(("accept", "expected"), [
    ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
     "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"),
    ("application/vnd.kubernetes.protobuf, application/json", "application/json"),
    ("application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io, Application/JSON;as=Table;v=v1;g=meta.k8s.io",
     "Application/JSON;as=Table;v=v1;g=meta.k8s.io"),
    ("application/yaml", "application/json"),
    ("application/cbor, */*", "application/json"),
    (None, "application/json"),
])
def test_accept_asks_for_json(accept: str | None, expected: str) -> None:
    assert json_accept(accept) == expected


def test_request_headers_replace_every_accept_and_keep_the_rest() -> None:
    request = head("PATCH", "/apis/apps/v1/namespaces/a/deployments/w", (
        ("accept", "application/vnd.kubernetes.protobuf"), ("content-type", "application/apply-patch+yaml"),
        ("accept", "application/json"), ("user-agent", "kubectl")))
    headers = DIALECT.request_headers(request, DIALECT.operation(request, b""))
    assert headers == (("content-type", "application/apply-patch+yaml"), ("user-agent", "kubectl"),
                       ("accept", "application/json"))


def test_refusal_is_a_status_kubectl_prints() -> None:
    request = head("GET", "/api/v1/namespaces/prod/secrets/db")
    reply = DIALECT.refusal(request, b"", 403, "permission denied by interceptor rule 'no-prod': prod is off limits",
                            "no-prod")
    assert reply.status == 403 and reply.headers == (("content-type", "application/json"),)
    assert orjson.loads(reply.body) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'get secrets "db" in namespace "prod" is forbidden by interceptor rule no-prod: prod is off limits',
        "reason": "Forbidden", "details": {"name": "db", "kind": "secrets"}, "code": 403}


def test_refusals_of_other_kinds() -> None:
    bad = orjson.loads(DIALECT.refusal(head("GET", "/api/v1//pods"), b"", 400, "path '/api/v1//pods': empty", None).body)
    assert (bad["reason"], bad["code"], bad["details"], bad["message"]) == ("BadRequest", 400, {},
                                                                            "path '/api/v1//pods': empty")
    masked = status_object(502, "masking failed", "kubernetes-secret-values", None)
    assert (masked["reason"], masked["code"]) == ("InternalError", 502)
    assert status_object(503, "x", None, None)["reason"] == "ServiceUnavailable"
    scale = KubeRequest("patch", "/apis/apps/v1/namespaces/a/deployments/w/scale", True, "apps", "v1", "deployments",
                        "scale", "a", "w")
    assert status_object(403, "held too long", "approve-it", scale)["details"] == {
        "name": "w", "group": "apps", "kind": "deployments"}
    assert status_object(403, "x", "r", KubeRequest("get", "/version", resource_request=False))["message"] == \
        "get /version is forbidden by interceptor rule r: x"


def test_no_masks_no_filter() -> None:
    request = head("GET", "/api/v1/namespaces/a/secrets/db")
    decision = Decision(Verdict.ALLOW, "reveal")
    assert DIALECT.response_filter(request, DIALECT.operation(request, b""), decision,
                                   ResponseHead(200, (("content-type", "application/vnd.kubernetes.protobuf"),))) is None


@pytest.mark.parametrize(("content_type", "extra", "message"), [
    ("application/vnd.kubernetes.protobuf", (), "not application/json"),
    ("application/yaml", (), "not application/json"),
    ("application/cbor", (), "not application/json"),
    ("text/plain", (), "not application/json"),
    ("", (), "(none)"),
    ("application/json", (("content-encoding", "gzip"),), "gzip-encoded"),
])
def test_bodies_that_cannot_be_masked_are_withheld(content_type: str, extra: tuple[tuple[str, str], ...],
                                                   message: str) -> None:
    with pytest.raises(MaskingError, match=message):
        body_filter("/api/v1/namespaces/a/secrets/db", allowed(SECRETS_REQUEST_PATHS), content_type, extra)


def test_a_secret_get_and_list_are_masked_whole() -> None:
    got = orjson.loads(run(body_filter("/api/v1/namespaces/a/secrets/db", allowed(SECRETS_REQUEST_PATHS)),
                           [orjson.dumps(secret())[:20], orjson.dumps(secret())[20:]]))
    assert_masked(got)
    listed = {"kind": "SecretList", "items": [{k: v for k, v in secret(n).items() if k != "kind"} for n in "ab"]}
    flt = body_filter("/api/v1/namespaces/a/secrets", allowed(SECRETS_REQUEST_PATHS))
    result = orjson.loads(run(flt, [orjson.dumps(listed)]))
    for item in result["items"]:
        assert_masked(item)
    assert flt.masked == 6


def test_a_table_of_secrets_and_a_secret_inside_another_object() -> None:
    table = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "columnDefinitions": [{"name": "Name"}],
             "rows": [{"cells": ["db", "Opaque", 1], "object": {"kind": "PartialObjectMetadata",
                                                                "metadata": secret()["metadata"]}}]}
    result = orjson.loads(run(body_filter("/api/v1/namespaces/a/secrets", allowed(SECRETS_REQUEST_PATHS)),
                              [orjson.dumps(table)]))
    assert result["rows"][0]["object"]["metadata"]["annotations"][LAST_APPLIED] == "****"
    assert result["rows"][0]["cells"] == ["db", "Opaque", 1]
    wrapper = {"kind": "ConfigMap", "data": {"k": "v"}, "spec": {"embedded": [secret()]}}
    result = orjson.loads(run(body_filter("/api/v1/namespaces/a/configmaps/c", allowed(SECRET_KIND_PATHS)),
                              [orjson.dumps(wrapper)]))
    assert_masked(result["spec"]["embedded"][0])
    assert result["data"] == {"k": "v"}


def test_a_watch_is_masked_event_by_event_however_it_is_split() -> None:
    events = [{"type": "ADDED", "object": secret("a")}, {"type": "MODIFIED", "object": secret("b")},
              {"type": "BOOKMARK", "object": {"kind": "Secret", "metadata": {"resourceVersion": "9"}}}]
    stream = b"".join(orjson.dumps(e) + b"\n" for e in events)
    for size in (1, 7, 64, len(stream)):
        flt = body_filter("/api/v1/namespaces/a/secrets?watch=true", allowed(SECRETS_REQUEST_PATHS))
        pieces = [stream[i:i + size] for i in range(0, len(stream), size)]
        outputs = [flt.feed(piece) for piece in pieces]
        assert all(out.endswith(b"\n") for out in outputs if out)  # only whole events leave
        lines = (b"".join(outputs) + flt.end()).split(b"\n")
        assert lines[-1] == b""
        got = [orjson.loads(line) for line in lines[:-1]]
        assert [e["type"] for e in got] == ["ADDED", "MODIFIED", "BOOKMARK"]
        assert_masked(got[0]["object"])
        assert_masked(got[1]["object"])
        assert flt.masked == 6  # data, stringData and the annotation of two Secrets


def test_the_first_event_leaves_before_the_second_arrives() -> None:
    flt = body_filter("/api/v1/namespaces/a/secrets?watch=1", allowed(SECRETS_REQUEST_PATHS))
    first = flt.feed(orjson.dumps({"type": "ADDED", "object": secret()}) + b"\n{\"type\":")
    assert_masked(orjson.loads(first)["object"])


def test_a_watch_told_by_its_content_type_and_a_table_watch() -> None:
    table_event = {"type": "ADDED", "object": {"kind": "Table", "rows": [{"cells": [], "object": secret()}]}}
    flt = body_filter("/api/v1/watch/namespaces/a/configmaps", allowed(SECRET_KIND_PATHS),
                      "application/json;stream=watch")
    assert isinstance(flt, WatchEventMask)
    assert_masked(orjson.loads(run(flt, [orjson.dumps(table_event), b"\n"]))["object"]["rows"][0]["object"])


def test_mask_paths_are_relative_to_each_object() -> None:
    pod = {"kind": "Pod", "spec": {"containers": [{"env": [{"name": "TOKEN", "value": "abc"}]}]}}
    decision = allowed(("spec.containers[*].env[*].value",), rule="mask-env")
    for target, document in (("/api/v1/namespaces/a/pods/p", pod), ("/api/v1/namespaces/a/pods", {"items": [pod]}),
                             ("/api/v1/namespaces/a/pods", {"rows": [{"object": pod}]})):
        out = run(body_filter(target, decision), [orjson.dumps(document)])
        assert b'"value":"****"' in out and b"abc" not in out
    watched = run(body_filter("/api/v1/namespaces/a/pods?watch=1", decision),
                  [orjson.dumps({"type": "ADDED", "object": pod}) + b"\n"])
    assert b"abc" not in watched
    assert rooted(MaskSpec(paths=('["a.b"]',)), ("", "items[*]")).paths == ('["a.b"]', 'items[*]["a.b"]')
    assert rooted(MaskSpec(classifiers=("email",)), ("object",)).paths == ()
    assert rooted(MaskSpec(paths=("**.x", "a")), ("object", "object.items[*]")).paths == (
        "object.**.x", "object.a", "object.items[*].a")  # `**` reaches the items already


def test_watch_limits_and_bad_events() -> None:
    masks = [JsonMask.of(MaskSpec(paths=SECRETS_REQUEST_PATHS, rule=SECRET_RULE))]
    small = WatchEventMask(masks, limit=32)
    with pytest.raises(MaskingError, match="larger than 32 bytes"):
        small.feed(b'{"type":"ADDED","object":{"kind":"Secret","data":{}}')
    with pytest.raises(MaskingError, match="larger than 32 bytes"):
        WatchEventMask(masks, limit=32).feed(b"{}\n" + b"x" * 40)
    with pytest.raises(MaskingError, match="not valid JSON"):
        WatchEventMask(masks).feed(b"{nope}\n")
    with pytest.raises(MaskingError, match="not valid JSON"):
        flt = WatchEventMask(masks)
        flt.feed(b'{"type":"ADDED"')
        flt.end()
    assert run(WatchEventMask(masks), [b"\n", b"{}\n"]) == b"\n{}\n"


def test_a_document_that_is_not_json_or_too_large_is_withheld() -> None:
    flt = body_filter("/api/v1/namespaces/a/secrets/db", allowed(SECRETS_REQUEST_PATHS))
    flt.feed(b"<html>")
    with pytest.raises(MaskingError, match="not valid JSON"):
        flt.end()
    assert body_filter("/api/v1/namespaces/a/secrets/db", allowed(SECRETS_REQUEST_PATHS)).end() == b""


# ---- through the HTTP session, judged by a policy ---------------------------------------------

SESSION_POLICY = """
version: 1
resources:
  k8s: {protocol: kubernetes, addresses: ["10.0.0.1:6443"]}
agents:
  bot: {uids: [1001]}
rules:
  - {name: read-secrets, effect: allow, kubernetes: {verbs: [get, list, watch], resources: [secrets]}}
  - {name: tokens, effect: allow, kubernetes: {verbs: [create], resources: [serviceaccounts/token]}}
  - {name: no-prod, effect: deny, reason: prod is off limits, kubernetes: {namespaces: [prod]}}
"""


def converse(*messages: tuple[Side, bytes]) -> tuple[bytes, bytes, list[Record]]:
    """What the upstream and the agent receive, and the records, when each side sends its message."""
    engine = PolicyEngine(load_policy_text(SESSION_POLICY, "k.yaml"))
    s = HttpSession(DIALECT, Judging(lambda op: engine.decide(Request(Subject("bot"), "k8s", op))),
                    server_name="k8s", credential_headers=(("authorization", "Bearer cluster"),))
    commands = s.start()
    for side, data in messages:
        commands += s.receive(side, data)
    sent = {side: b"".join(bytes(piece) for c in commands if isinstance(c, Send) and c.to is side for piece in c.data)
            for side in Side}
    return sent[Side.SERVER], sent[Side.CLIENT], [c for c in commands if isinstance(c, Record)]


def test_a_token_request_answer_carries_no_token() -> None:
    answer = orjson.dumps({
        "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "metadata": {"name": "builder"},
        "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600},
        "status": {"token": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJidWlsZGVyIn0.c2ln",
                   "expirationTimestamp": "2026-11-30T09:00:00Z"}})
    request = b'{"kind":"TokenRequest","apiVersion":"authentication.k8s.io/v1","spec":{}}'
    up, down, _ = converse(
        (Side.CLIENT, b"POST /api/v1/namespaces/dev/serviceaccounts/builder/token HTTP/1.1\r\nHost: k8s\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(request), request)),
        (Side.SERVER, b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(answer), answer)))
    assert up.startswith(b"POST /api/v1/namespaces/dev/serviceaccounts/builder/token ")
    assert down.startswith(b"HTTP/1.1 201 ") and b"eyJ" not in down
    assert b'"status":{"token":"****","expirationTimestamp":"2026-11-30T09:00:00Z"}' in down  # (chunked)
    assert b'"expirationSeconds":3600' in down


def test_kubectl_get_secret_through_the_session_is_masked() -> None:
    body = orjson.dumps(secret())
    up, down, records = converse(
        (Side.CLIENT, b"GET /api/v1/namespaces/dev/secrets/db HTTP/1.1\r\nHost: k8s\r\n"
                      b"Accept: application/vnd.kubernetes.protobuf, application/json\r\n"
                      b"Accept-Encoding: gzip\r\nAuthorization: Bearer agent\r\n\r\n"),
        (Side.SERVER, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                      + str(len(body)).encode() + b"\r\n\r\n" + body))
    assert b"accept: application/json\r\n" in up and b"protobuf" not in up and b"gzip" not in up
    assert b"Bearer agent" not in up
    assert b"hunter2" not in down and base64.b64encode(b"hunter2") not in down
    assert_masked(orjson.loads(down.partition(b"\r\n\r\n")[2].split(b"\r\n")[1]))
    assert records[0].decision.rule == "read-secrets" and records[0].operation["resource"] == "secrets"


def test_a_denied_request_gets_a_status_and_nothing_goes_up() -> None:
    up, down, records = converse((Side.CLIENT, b"GET /api/v1/namespaces/prod/secrets/db HTTP/1.1\r\nHost: k8s\r\n\r\n"))
    assert up == b""
    status = orjson.loads(down.partition(b"\r\n\r\n")[2])
    assert down.startswith(b"HTTP/1.1 403 ")
    assert status["message"] == ('get secrets "db" in namespace "prod" is forbidden by interceptor rule no-prod: '
                                 "prod is off limits")
    assert records[0].decision.rule == "no-prod"


# ---- the python kubernetes client through the handler, against the API stand-in -------------
# (tests/kubeapi: no real kube-apiserver can be installed here; the stand-in follows the API's
# conventions: discovery, resourceVersion, lists, chunked watch, Status errors)

CLIENT_POLICY = """
version: 1
resources:
  k8s:
    protocol: kubernetes
    addresses: ["127.0.0.1:PORT"]
    credentials: {from: env, name: CLUSTER_TOKEN}
    options: {tls: {ca: CA, server_name: 127.0.0.1}}
agents:
  bot: {uids: [1001]}
rules:
  - {name: work, effect: allow, kubernetes: {verbs: [get, list, watch, create], namespaces: [default]}}
  - {name: no-delete, effect: deny, reason: deletes go through the pipeline, kubernetes: {verbs: [delete]}}
"""


def through_handler(api: KubeApi, client: Callable[[str], T]) -> tuple[T, list[AuditEvent]]:
    """Run `client(url)` in a thread against a loopback listener whose every connection the
    kubernetes HANDLER serves, upstream the stand-in with its token; its result and the records."""
    policy = load_policy_text(CLIENT_POLICY.replace("PORT", str(api.port)).replace("CA", str(api.ca)), "k.yaml")
    engine = PolicyEngine(policy)
    sink = Sink()

    async def token() -> dict[str, str]:
        return {"token": api.token}

    async def serve(conn: socket.socket) -> None:
        process = ProcessInfo(os.getpid(), 1, 1001, 1001, "/usr/bin/python3", ("python3",), "/agents/bot")
        loopback = ipaddress.ip_address("127.0.0.1")
        flow = FlowContext("flow", "bot", process, Endpoint(loopback, api.port),
                           Endpoint(loopback, conn.getpeername()[1]), "k8s", connection_rule="work")
        services = Services(judge=FlowJudge(flow, lambda: engine, lambda: None, lambda: False), audit=sink,
                            resource=policy.resources["k8s"], credentials=token)
        await HANDLER.serve(flow, conn, services)

    async def main() -> T:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        loop = asyncio.get_running_loop()
        flows: set[asyncio.Task[None]] = set()

        async def accept() -> None:
            while True:
                conn, _ = await loop.sock_accept(listener)
                flows.add(asyncio.create_task(serve(conn)))

        acceptor = asyncio.create_task(accept())
        try:
            return await asyncio.to_thread(client, f"http://127.0.0.1:{listener.getsockname()[1]}")
        finally:
            acceptor.cancel()
            listener.close()
            for flow in flows:  # each request is recorded as it ends; the client keeps idle connections
                flow.cancel()
            await asyncio.gather(*flows, return_exceptions=True)

    return asyncio.run(asyncio.wait_for(main(), 60)), sink.events


def test_the_python_client_reads_secrets_masked_and_is_refused_by_rule(kubeapi: KubeApi) -> None:
    def client(url: str) -> dict[str, Any]:
        configuration = kubernetes.client.Configuration()
        configuration.host = url
        with kubernetes.client.ApiClient(configuration) as api_client:
            core = kubernetes.client.CoreV1Api(api_client)
            created = core.create_namespaced_secret("default", kubernetes.client.V1Secret(
                metadata=kubernetes.client.V1ObjectMeta(name="py-db"), string_data={"password": "hunter2"}))
            read = core.read_namespaced_secret("py-db", "default")
            listed = core.list_namespaced_secret("default")
            watcher = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
            events = watcher.stream(core.list_namespaced_secret, "default",  # type: ignore[no-untyped-call]
                                    timeout_seconds=1)
            watched = [event["object"] for event in events]
            with pytest.raises(kubernetes.client.ApiException) as refused:
                core.delete_namespaced_secret("py-db", "default")
            return {"created": created, "read": read, "listed": listed, "watched": watched, "refused": refused.value}

    got, events = through_handler(kubeapi, client)
    masked = base64.b64encode(b"****").decode()
    assert got["created"].data == {"password": masked}
    assert got["read"].data == {"password": masked}
    assert [s.data for s in got["listed"].items if s.metadata.name == "py-db"] == [{"password": masked}]
    assert [s.data for s in got["watched"] if s.metadata.name == "py-db"] == [{"password": masked}]
    refused = got["refused"]
    assert refused.status == 403
    status = orjson.loads(refused.body)
    assert (status["kind"], status["reason"]) == ("Status", "Forbidden")
    assert status["message"] == ('delete secrets "py-db" in namespace "default" is forbidden by interceptor rule '
                                 "no-delete: deletes go through the pipeline")
    assert "hunter2" not in repr(got) and base64.b64encode(b"hunter2").decode() not in repr(got)
    requests = [e for e in events if e.kind == "request"]
    assert [(e.rule, (e.operation or {}).get("verb")) for e in requests] == [
        ("work", "create"), ("work", "get"), ("work", "list"), ("work", "watch"), ("no-delete", "delete")]
    assert all((e.outcome or {}).get("masked") for e in requests[:4])
    upstream = [r for r in kubeapi.requests() if "py-db" in r["path"] or r["path"].endswith("/secrets")]
    assert all(dict(r["headers"]).get("authorization") == f"Bearer {kubeapi.token}" for r in upstream)
    assert not any(r["method"] == "DELETE" for r in kubeapi.requests())


def test_a_pod_log_is_masked_line_by_line_by_classifiers() -> None:
    decision = Decision(Verdict.ALLOW, "r", masks=(MaskSpec(classifiers=("email",), rule="mask-logs"),))
    flt = body_filter("/api/v1/namespaces/a/pods/p/log?follow=true", decision, "text/plain")
    assert isinstance(flt, LogLineMask)
    first = flt.feed(b"login by alice@example.com ok\nlogin by b")
    assert first.endswith(b"\n") and b"alice@example.com" not in first and first.startswith(b"login by ")
    rest = flt.feed(b"ob@example.com\n") + flt.end()
    assert b"bob@example.com" not in rest and flt.masked == 2
    with pytest.raises(MaskingError, match="JSON paths, which a pod log has none of"):
        body_filter("/api/v1/namespaces/a/pods/p/log", allowed(("data.*",)), "text/plain")
    with pytest.raises(MaskingError, match="larger than 8 bytes"):
        LogLineMask([], limit=8).feed(b"0123456789")


def test_a_path_mask_covers_the_copy_kubectl_apply_keeps_in_the_last_applied_annotation() -> None:
    last = orjson.dumps({"kind": "ConfigMap", "data": {"oncall": "alice@example.com"}}).decode()
    configmap = {"kind": "ConfigMap", "metadata": {"name": "contacts", "annotations": {LAST_APPLIED: last}},
                 "data": {"oncall": "alice@example.com"}}
    base = load_policy_text(f"""
version: 1
resources:
  k8s: {{protocol: kubernetes, addresses: ["10.0.0.1:6443"]}}
agents:
  bot: {{uids: [1001]}}
rules:
  - {{name: read, effect: allow, kubernetes: {{verbs: [get], resources: [configmaps]}}}}
  - {{name: mask-emails, effect: mask, kubernetes: {{resources: [configmaps]}},
     mask: {{paths: ["data.*"], classifiers: [email], style: partial}}}}
""", "k.yaml")
    decision = PolicyEngine(base).decide(Request(Subject("bot"), "k8s", KubeRequest(
        "get", "/api/v1/namespaces/a/configmaps/contacts", resource="configmaps", api_version="v1",
        namespace="a", name="contacts")))
    out = run(body_filter("/api/v1/namespaces/a/configmaps/contacts", decision), [orjson.dumps(configmap)])
    assert b"alice@example.com" not in out and b"a***@example.com" in out
