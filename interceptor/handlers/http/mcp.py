"""The Dialect of `protocol: mcp` resources: MCP's Streamable HTTP transport (MCP
specification 2025-06-18, "Transports", section "Streamable HTTP"; messages are JSON-RPC 2.0).

Requests. Only the MCP endpoint is reached (the transport has one path: the resource's
`endpoint` option, `/mcp` by default; no query): a request for any other target is refused
(403), so the server's other routes are not reachable as "MCP". No upgrades, and no body on
GET or DELETE (400). The agent POSTs one JSON-RPC message (at most BODY_LIMIT bytes), read
whole and judged as an McpCall (interceptor.policy.mcp_rules): a request or notification by
its method (a tools/call by its tool's name and canonical arguments), a response it sends
back to the server as `rpc.response`. GET (the stream of the server's own requests and
notifications) is `rpc.listen`, DELETE (the end of the session) `rpc.terminate`. What the
server could read otherwise than the enforcer is refused with 400 (ClientProtocolError): a
content type other than `application/json` (UTF-8), a content coding, a body that is not
strict JSON (RFC 8259: duplicate member names, a BOM, invalid UTF-8, NaN, numbers past
64-bit integers or finite doubles, lone surrogates), a batch (a JSON array: MCP 2025-06-18
removed batching), anything that is not one JSON-RPC 2.0 request, notification or response
(unknown members, an id that is not a string or integer, non-object params, a method name
starting with `rpc.`, or one that is tools/call but for case or spaces), and a tools/call
whose `name` is not a string or whose `arguments` is not an object.

Request ids. The `mcp` SDK's server routes a response (and every message about a request) to
the POST stream registered under str(id), the latest one. So a request whose str(id) is in
flight in its MCP session on another connection (7 and "7" alike) is refused with 400, and
one reusing the id of a request whose connection ended before its answer gets that
request's masks and tools filter too (see InFlight), as is a request id the SDK keys a stream of its own by (RESERVED_IDS:
`_GET_stream`, its GET stream) and more than one Mcp-Session-Id header. A response on a
POST's stream must carry that request's id (same JSON type), else it is withheld
(MaskingError): it answers another request, whose masks are not known there. Ids of the
server's own requests (sampling, elicitation, roots) and of the agent's responses to them
are the server's and pass as they are.

Refusals, as MCP clients show them: a request with an id that the policy refuses (403) gets
HTTP 200 with the JSON-RPC error `{"jsonrpc": "2.0", "id": <its id>, "error": {"code":
DENIED_CODE, "message": ...}}` (the `mcp` client raises MCPError with that code and message); any other
refusal keeps its HTTP status and carries a JSON-RPC error with the request's id when it
could be read, else `"id": null` (the transport section: a notification or response the
server does not accept gets an HTTP error status, its body MAY be a JSON-RPC error with no
id). Codes: -32700 parse error for a body that is not JSON, -32600 invalid request for other
client errors, -32603 internal error for failures on the server's side or the enforcer's.

Responses, when filtered (a tools/list answer, the GET stream, or a decision with masks):
`application/json` bodies are read whole (up to MASKED_BODY_LIMIT), `text/event-stream`
bodies event by event (interceptor.handlers.http.sse), each message filtered:
- a response's `result`: the tools of a tools/list answer that the agent may not call are
  removed (asked of the judge as `McpCall("tools/list", tool=NAME)`), then each mask of the
  decision applies (its JSON paths relative to `result`; without paths, its classifiers on
  every string, base64 data included);
- an `error`, or the `params` of a server request or notification (progress, log messages,
  sampling), get the decision's masks that have no paths;
- on the GET stream, a response (only sent when the server replays a stream on resumption,
  `Last-Event-ID`) is a MaskingError: the masks and the filter of the request it answers are
  not known there.
A response with `Content-Length: 0` (202 Accepted) has nothing to filter. A filtered
response must be `identity`-coded (Accept-Encoding: identity is always sent
upstream) and JSON or an event stream, else MaskingError; a response with an error status
in another content type is relayed when no mask applies (no result can be in it).
"""

from __future__ import annotations

import json
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson

from interceptor.audit.scrub import scrub
from interceptor.decision import Decision, MaskSpec, Verdict
from interceptor.errors import ClientProtocolError, MaskingError, ProtocolViolation, Refused
from interceptor.handlers.base import Services, resource_option
from interceptor.handlers.http.dialect import BodyFilter, Reply, RequestHead, ResponseHead
from interceptor.handlers.http.handler import HttpHandler
from interceptor.handlers.http.plain import MASKED_BODY_LIMIT, JsonBodyMask
from interceptor.handlers.http.sse import CONTENT_TYPE as SSE_CONTENT_TYPE
from interceptor.handlers.http.sse import Comment, Event, SseParser, serialize
from interceptor.masking.json_paths import JsonMask, mask_document
from interceptor.operations import McpCall, Operation, Pairs
from interceptor.policy.mcp_rules import LISTEN_METHOD, RESPONSE_METHOD, TERMINATE_METHOD, TOOLS_CALL, TOOLS_LIST

BODY_LIMIT = 4 * 1024 * 1024  # bytes of one POSTed JSON-RPC message
DEFAULT_ENDPOINT = "/mcp"  # the MCP endpoint's path when the resource's `endpoint` option names none
DENIED_CODE = -32003  # JSON-RPC implementation-defined server error (-32000..-32099); the mcp SDK uses -32000/-32001
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603
_MEMBERS = frozenset({"jsonrpc", "id", "method", "params", "result", "error"})
# Request ids the `mcp` SDK's StreamableHTTPServerTransport keys streams by besides str(id):
# its standalone GET stream (GET_STREAM_KEY). A request with that id would take it over.
RESERVED_IDS = frozenset({"_GET_stream"})
SESSION_HEADER = "mcp-session-id"


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    member = dict(pairs)
    if len(member) != len(pairs):
        names = [name for name, _ in pairs]
        raise ValueError(f"duplicate member name {next(n for n in names if names.count(n) > 1)!r}")
    return member


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant, parse_float=_finite)


def strict_json(body: bytes) -> Any:
    """The JSON value of `body` as every conforming parser reads it (RFC 8259): UTF-8 without
    a BOM, no duplicate member names, no NaN/Infinity, finite doubles, integers within 64
    bits, no lone surrogates. ValueError saying what is wrong."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 at byte {exc.start}") from None
    if text.startswith("\ufeff"):
        raise ValueError("starts with a byte order mark")
    try:
        value = _DECODER.decode(text)
        orjson.dumps(value)  # refuses integers past 64 bits and lone surrogates
    except (json.JSONDecodeError, RecursionError, orjson.JSONEncodeError) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None
    return value


def jsonrpc_call(message: Any) -> McpCall:
    """The McpCall one parsed JSON-RPC message stands for; ClientProtocolError for what is not
    one MCP JSON-RPC 2.0 request, notification or response (see the module docstring)."""
    if isinstance(message, list):
        raise ClientProtocolError("JSON-RPC batches are not supported (MCP 2025-06-18 has none): send one message")
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise ClientProtocolError('not a JSON-RPC 2.0 message (an object with "jsonrpc": "2.0")')
    unknown = sorted(set(message) - _MEMBERS)
    if unknown:
        raise ClientProtocolError(f"JSON-RPC message with unknown member(s) {', '.join(unknown)}")
    if "id" in message and not _valid_id(message["id"]):
        raise ClientProtocolError("a JSON-RPC id must be a string or an integer (MCP: never null)")
    if "method" not in message:
        if "id" not in message or ("result" in message) == ("error" in message):
            raise ClientProtocolError("a JSON-RPC message has a method, or an id and one of result and error")
        return McpCall(RESPONSE_METHOD)
    method, params = message["method"], message.get("params", {})
    if "result" in message or "error" in message:
        raise ClientProtocolError("a JSON-RPC request or notification has no result or error")
    if "id" in message and str(message["id"]) in RESERVED_IDS:
        raise ClientProtocolError(f"request id {message['id']!r} is reserved by MCP servers for their own streams")
    if not isinstance(method, str) or not method or method.startswith("rpc."):
        raise ClientProtocolError("a JSON-RPC method is a non-empty string not starting with rpc. (reserved)")
    if method != TOOLS_CALL and method.strip().casefold() == TOOLS_CALL:
        raise ClientProtocolError(f"method {method!r} is not tools/call, but a lenient server could read it so")
    if not isinstance(params, dict):
        raise ClientProtocolError("MCP params are an object")
    if method != TOOLS_CALL:
        return McpCall(method)
    name, arguments = params.get("name"), params.get("arguments", {})
    if not isinstance(name, str):
        raise ClientProtocolError("tools/call needs params.name, a string")
    if not isinstance(arguments, dict):
        raise ClientProtocolError("tools/call params.arguments must be an object")
    return McpCall(method, name, orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS).decode())


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _media(content_type: str | None) -> tuple[str, str]:
    """The media type (lower case) and the charset parameter ("" when absent)."""
    media, _, parameters = (content_type or "").partition(";")
    charset = ""
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    return media.strip().lower(), charset


Key = tuple[str, str, str]  # (resource, Mcp-Session-Id, str(id))


@dataclass(slots=True)
class _Entry:
    """One key of InFlight: the dialect holding it (weakly) and its request, and the requests
    abandoned in flight under it, whose answers may still come to whoever holds it."""

    holder: weakref.ref[McpDialect] | None = None
    call: McpCall | None = None
    orphans: tuple[McpCall, ...] = ()


class InFlight:
    """The JSON-RPC requests in flight in each MCP session, across the flows (connections) of
    every mcp resource, by Key.

    Why: the `mcp` SDK's StreamableHTTPServerTransport sends a response, and every message
    about a request (progress, sampling), to the POST stream it registered under str(id),
    the latest such POST of the session. Two requests of one session in flight with the
    same str(id) (7 and "7" too) on two connections would have the first one's answer leave
    through the second one's filter, its masks not applied. MCP (2025-06-18, Basic Protocol)
    forbids reusing an id in a session; the enforcer refuses a request whose str(id) is in
    flight in its session on another live connection (ClientProtocolError, 400).

    A request is in flight from when it is judged until its response is seen (the head of a
    JSON answer, or the response message of an event stream, or that stream's end), it is
    refused, or the flow's next request is judged. When the flow's dialect is gone first
    (the agent's connection ended; held weakly), the request is abandoned: the server may
    still answer it, to whichever stream then holds its id. The next request under that key
    is let through, but inherits the abandoned requests (an orphan stays until the session
    ends with a DELETE): its answer is filtered with their masks and tools filters as well.
    A session with more than `limit` abandoned requests is refused from then on (400: start
    a new session), which bounds what is kept. Requests without an Mcp-Session-Id
    (initialize, servers without sessions) are not tracked: each has a transport of its own."""

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._entries: dict[Key, _Entry] = {}
        self._abandoned: dict[tuple[str, str], int] = {}  # abandoned requests kept, per session
        self._spoiled: set[tuple[str, str]] = set()  # sessions past the limit
        self._sweep_at = 1024

    def reserve(self, key: Key, holder: McpDialect, call: McpCall) -> tuple[McpCall, ...]:
        """Hold `key` for `holder`'s `call`; returns the requests abandoned under it.
        ClientProtocolError when another live dialect holds it or the session is spoiled."""
        self._unspoiled(key)
        entry = self._entries.setdefault(key, _Entry())
        current = entry.holder() if entry.holder is not None else None
        if current is not None and current is not holder:
            raise ClientProtocolError(f"request id {key[2]!r} is in flight in this MCP session on another "
                                      "connection: an id is used once per session (MCP, Basic Protocol)")
        if entry.holder is not None and current is None:
            self._abandon(key, entry)
            self._unspoiled(key)
        entry.holder, entry.call = weakref.ref(holder), call
        if len(self._entries) > self._sweep_at:
            self._sweep()
        return entry.orphans

    def _unspoiled(self, key: Key) -> None:
        if key[:2] in self._spoiled:
            raise ClientProtocolError(f"more than {self.limit} requests of this MCP session were abandoned in "
                                      "flight (connections closed before their answers): start a new session")

    def release(self, key: Key, holder: McpDialect) -> None:
        """Let `key` go if `holder` holds it (what was abandoned under it stays)."""
        entry = self._entries.get(key)
        if entry is None or entry.holder is None or entry.holder() is not holder:
            return
        if entry.orphans:
            entry.holder = entry.call = None
        else:
            del self._entries[key]

    def end(self, session: tuple[str, str]) -> None:
        """The session ended (DELETE answered): forget what was abandoned in it."""
        self._abandoned.pop(session, None)
        for key in [key for key, entry in self._entries.items() if key[:2] == session]:
            entry = self._entries[key]
            if entry.holder is None or entry.holder() is None:
                del self._entries[key]
            else:
                entry.orphans = ()

    def _abandon(self, key: Key, entry: _Entry) -> None:
        """The holder of `key` is gone with its request unanswered: keep it as an orphan."""
        entry.orphans = (*entry.orphans, *(() if entry.call is None else (entry.call,)))
        entry.holder = entry.call = None
        session = key[:2]
        self._abandoned[session] = self._abandoned.get(session, 0) + 1
        if self._abandoned[session] > self.limit:
            self._spoiled.add(session)
            del self._abandoned[session]
            for gone in [k for k, e in self._entries.items() if k[:2] == session and e.holder is None]:
                del self._entries[gone]

    def _sweep(self) -> None:
        """Turn the keys of dialects that are gone into orphans."""
        for key, entry in list(self._entries.items()):
            if key in self._entries and entry.holder is not None and entry.holder() is None:
                self._abandon(key, entry)
        self._sweep_at = max(1024, 2 * len(self._entries))


IN_FLIGHT = InFlight()


class McpDialect:
    """The mcp Dialect for one flow (interceptor.handlers.http.dialect.Dialect); the judge
    of `services` decides which tools a tools/list answer keeps."""

    name = "mcp"

    def __init__(self, services: Services, in_flight: InFlight = IN_FLIGHT) -> None:
        self.services = services
        self.in_flight = in_flight
        self.reservation: Key | None = None  # the request of this flow in flight (InFlight)
        self.request_id: str | int | None = None  # the id of the request the response answers
        self.inherited: tuple[McpCall, ...] = ()  # requests abandoned under its id, whose answers may come

    def body_limit(self, head: RequestHead) -> int:
        return BODY_LIMIT if head.method == "POST" else 0

    def operation(self, head: RequestHead, body: bytes) -> Operation:
        self.answered()  # one request at a time on a flow: the one before is over
        endpoint = resource_option(self.services.resource, "endpoint") or DEFAULT_ENDPOINT
        if head.path != endpoint or "?" in head.target:
            raise Refused("42501", f"the MCP endpoint of this resource is {endpoint} (no query); "
                                   f"{head.target[:200]} is not reached through it")
        if head.header("upgrade") is not None:
            raise ClientProtocolError("MCP's Streamable HTTP transport has no protocol upgrades")
        if head.method != "POST" and (head.header("transfer-encoding") is not None
                                      or (head.header("content-length") or "0") != "0"):
            raise ClientProtocolError(f"an MCP {head.method} has no body")
        if head.method == "GET":
            return McpCall(LISTEN_METHOD)
        if head.method == "DELETE":
            return McpCall(TERMINATE_METHOD)
        if head.method != "POST":
            raise ClientProtocolError(f"MCP's Streamable HTTP transport has POST, GET and DELETE, not {head.method}")
        media, charset = _media(head.header("content-type"))
        if media != "application/json" or charset not in ("", "utf-8"):
            raise ClientProtocolError(f"an MCP message is application/json in UTF-8, not "
                                      f"{head.header('content-type') or '(no content type)'}")
        coding = head.header("content-encoding")
        if coding is not None and coding.strip().lower() != "identity":
            raise ClientProtocolError(f"a {coding}-coded MCP message is not read by the enforcer; send it uncoded")
        try:
            message = strict_json(body)
        except ValueError as exc:
            raise ClientProtocolError(f"the MCP message is not strict JSON: {exc}") from None
        call = jsonrpc_call(message)
        if call.method != RESPONSE_METHOD and "id" in message:
            self._reserve(head, message["id"], call)
        return call

    def _reserve(self, head: RequestHead, request_id: str | int, call: McpCall) -> None:
        sessions = [value for name, value in head.headers if name == SESSION_HEADER]
        if len(sessions) > 1:
            raise ClientProtocolError("more than one Mcp-Session-Id header: a server could read either")
        if sessions:
            session = sessions[0]
            key = (self.services.resource.name, session, str(request_id))
            self.inherited = self.in_flight.reserve(key, self, call)
            self.reservation = key
        self.request_id = request_id

    def answered(self) -> None:
        """The request of this flow is answered, refused or over: its id is no longer in flight."""
        if self.reservation is not None:
            self.in_flight.release(self.reservation, self)
        self.reservation = self.request_id = None
        self.inherited = ()

    def request_headers(self, head: RequestHead, operation: Operation) -> Pairs:
        return (*((name, value) for name, value in head.headers if name != "accept-encoding"),
                ("accept-encoding", "identity"))

    def refusal(self, head: RequestHead, body: bytes, status: int, message: str, rule: str | None) -> Reply:
        self.answered()
        request_id: str | int | None = None
        code = INTERNAL_ERROR if status >= 500 else INVALID_REQUEST
        if head.method == "POST" and status != 413:
            try:
                parsed = strict_json(body)
            except ValueError:
                code = PARSE_ERROR if status == 400 else code
            else:
                if isinstance(parsed, dict) and "method" in parsed and _valid_id(parsed.get("id")):
                    request_id = parsed["id"]
        if status == 403:
            code = DENIED_CODE
            status = 200 if request_id is not None else status
        error: dict[str, object] = {"code": code, "message": message}
        if rule is not None:
            error["data"] = {"rule": rule}
        return Reply(status, (("content-type", "application/json"),),
                     orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}))

    def response_filter(self, head: RequestHead, operation: Operation, decision: Decision,
                        response: ResponseHead) -> BodyFilter | None:
        if not isinstance(operation, McpCall):
            raise TypeError(f"the mcp dialect judged {type(operation).__name__}, not McpCall")
        listen = operation.method == LISTEN_METHOD
        session = head.header(SESSION_HEADER)
        if operation.method == TERMINATE_METHOD and 200 <= response.status < 300 and session is not None:
            self.in_flight.end((self.services.resource.name, session))
        specs, listing = self._with_inherited(decision, operation.method == TOOLS_LIST)
        media, _ = _media(response.header("content-type"))
        coding = response.header("content-encoding")
        uncoded = coding is None or coding.strip().lower() == "identity"
        request_id = self.request_id
        if media != SSE_CONTENT_TYPE or response.header("content-length") == "0" or not uncoded:
            self.answered()  # the answer is the response (or holds none we could read)
        elif self.reservation is not None and not (specs or listing or listen):
            return EventStream(MessageFilter([], None, False, request_id, self.answered))
        if not (specs or listing or listen) or response.header("content-length") == "0":
            return None
        if media not in ("application/json", SSE_CONTENT_TYPE):
            if not specs and not 200 <= response.status < 300:
                return None
            raise MaskingError(f"the answer to {operation.method} must be filtered, but its content type "
                               f"{response.header('content-type') or '(none)'} is neither JSON nor an event stream; "
                               "withheld")
        if not uncoded:
            raise MaskingError(f"the answer to {operation.method} must be filtered, but it is {coding}-coded; withheld")
        masks = [JsonMask.of(spec, self.services.mask_key) for spec in specs]
        messages = MessageFilter(masks, self._callable if listing else None, listen, request_id, self.answered)
        return JsonBody(messages) if media == "application/json" else EventStream(messages)

    def _with_inherited(self, decision: Decision, listing: bool) -> tuple[tuple[MaskSpec, ...], bool]:
        """The decision's masks and whether to filter a tools list, with those of the requests
        abandoned under this request's id (InFlight), judged again now: their answers may come
        here. MaskingError when one of them is denied now."""
        masks = decision.masks
        judge = self.services.judge
        for call in self.inherited:
            inherited = judge.judged(judge.request(call), judge.engine())
            if inherited.verdict is Verdict.DENY:
                raise MaskingError(f"an answer to an abandoned {call.method} under this request's id may come "
                                   f"here, and it is denied now ({inherited.reason}); withheld")
            masks = (*masks, *inherited.masks)
            listing = listing or call.method == TOOLS_LIST
        return masks, listing

    def audit_operation(self, operation: Operation) -> dict[str, object]:
        """The summary with the arguments scrubbed (interceptor.audit.scrub: members with
        telling names, passwords in URLs, tokens), as canonical JSON."""
        summary = operation.summary()
        if isinstance(operation, McpCall) and operation.tool is not None:
            try:
                arguments = scrub(orjson.loads(operation.arguments))
            except (orjson.JSONDecodeError, ValueError):
                arguments = "[not JSON]"
            summary["arguments"] = orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS).decode()
        return summary

    def _callable(self, tool: str) -> bool:
        """May the agent call `tool` with some arguments (its entry in a tools/list answer)?"""
        try:
            return self.services.judge.decide(McpCall(TOOLS_LIST, tool)).allowed
        except Exception:  # noqa: BLE001 - a policy that cannot be evaluated lists nothing
            return False


class MessageFilter:
    """Filters one JSON-RPC message from the server (see the module docstring). `listed`:
    whether the agent may call a tool, for a tools/list answer (None: not one); `listen`: the
    message came on the GET stream; `request_id`: the id of the POSTed request whose answer
    this is (None: unknown), which a response on its stream must carry (else MaskingError:
    another request's answer, whose masks are not known here); `answered`: called when the
    response passes or the stream ends."""

    def __init__(self, masks: list[JsonMask], listed: Callable[[str], bool] | None, listen: bool,
                 request_id: str | int | None = None, answered: Callable[[], None] = lambda: None) -> None:
        self.masks = masks
        self.bare = [mask for mask in masks if not mask.paths]
        self.listed = listed
        self.listen = listen
        self.request_id = request_id
        self.answered = answered
        self.masked = 0
        self._verdicts: dict[str, bool] = {}

    def message(self, message: Any) -> Any:
        """The message, filtered in place; MaskingError for what cannot be filtered."""
        if not isinstance(message, dict):
            raise MaskingError("the server sent a JSON value that is not one JSON-RPC message; withheld")
        if "result" in message or "error" in message:
            self._response(message.get("id"))
        if "result" in message:
            if self.listen:
                raise MaskingError("a response on the GET stream (a replayed stream): the masks and tools filter "
                                   "of the request it answers are not known here; withheld")
            message["result"] = self._result(message["result"])
        for member in ("error", "params"):
            if member in message and self.bare:
                message[member], count = mask_document(message[member], self.bare)
                self.masked += count
        return message

    def _response(self, response_id: Any) -> None:
        expected = self.request_id
        if expected is not None and response_id is not None \
                and (type(response_id) is not type(expected) or response_id != expected):
            raise MaskingError(f"a response to request {str(response_id)[:40]!r} on the stream of request "
                               f"{str(expected)[:40]!r}: its masks are not known here; withheld")
        self.answered()

    def _result(self, result: Any) -> Any:
        if self.listed is not None and isinstance(result, dict) and "tools" in result:
            tools = result["tools"]
            if not isinstance(tools, list):
                raise MaskingError("a tools/list answer whose tools is not a list; withheld")
            kept = [tool for tool in tools if isinstance(tool, dict) and self._listed(tool.get("name"))]
            self.masked += len(tools) - len(kept)
            result["tools"] = kept
        result, count = mask_document(result, self.masks)
        self.masked += count
        return result

    def _listed(self, name: Any) -> bool:
        if not isinstance(name, str) or self.listed is None:
            return False
        if name not in self._verdicts:
            self._verdicts[name] = self.listed(name)
        return self._verdicts[name]


class JsonBody(JsonBodyMask):
    """A BodyFilter for an `application/json` answer: one JSON-RPC message, kept until the
    body ends (at most MASKED_BODY_LIMIT bytes, as JsonBodyMask keeps it), then filtered
    and sent whole."""

    def __init__(self, messages: MessageFilter) -> None:
        super().__init__([], MASKED_BODY_LIMIT)
        self.messages = messages

    what = "an MCP answer to filter"

    def filtered(self, document: Any) -> Any:
        message = self.messages.message(document)
        self.masked = self.messages.masked
        return message


class EventStream:
    """A BodyFilter for a `text/event-stream` answer: each event's data is one JSON-RPC
    message, filtered and written again as the event arrives; comments and events without
    data (a priming event's id) pass as they are."""

    def __init__(self, messages: MessageFilter) -> None:
        self.messages = messages
        self.masked = 0
        self._parser = SseParser()

    def feed(self, data: bytes) -> bytes:
        try:
            items = self._parser.feed(data)
        except ProtocolViolation as exc:
            raise MaskingError(f"the server's event stream cannot be read: {exc}; withheld") from None
        return b"".join(serialize(self._item(item)) for item in items)

    def end(self) -> bytes:
        rest = b"".join(serialize(self._item(item)) for item in self._parser.end())
        self.messages.answered()
        return rest

    def _item(self, item: Event | Comment) -> Event | Comment:
        if isinstance(item, Comment) or not item.data:
            return item
        try:
            message = orjson.loads(item.data)
        except orjson.JSONDecodeError as exc:
            raise MaskingError(f"an event of the server's stream is not JSON ({exc}); withheld") from None
        filtered = self.messages.message(message)
        self.masked = self.messages.masked
        return Event(orjson.dumps(filtered).decode(), item.event, item.id, item.retry)


HANDLER = HttpHandler("mcp", McpDialect)
