"""The Dialect of `protocol: kubernetes` resources, and their handler.

- A request is a KubeRequest, derived from the method, the path and the query exactly as the
  API server derives its RequestInfo (interceptor.policy.kube_request), but for a connect
  subresource (pods exec, attach, portforward, proxy; services and nodes proxy), whose verb is
  `create` whatever the method: a WebSocket upgrade's GET is judged as SPDY's POST is. One the
  server could read differently is refused 400. Nothing of the body is needed (body_limit 0).
- Accept is rewritten so the server answers JSON, the one encoding masks can be applied to:
  the agent's `application/json` media ranges are kept with their parameters (`;as=Table;
  g=meta.k8s.io;v=v1`, what kubectl get asks for), protobuf, YAML, CBOR and wildcards are
  dropped, and with nothing left `application/json` is asked. Content-Type is kept (a body in
  protobuf or YAML is the server's to read). The session asks for identity content coding.
- A refusal is a Kubernetes `Status` (k8s.io/apimachinery pkg/apis/meta/v1 types.go: kind
  Status, status Failure, reason, code, details {name, group, kind}), so kubectl prints
  `Error from server (Forbidden): get secrets "db" in namespace "prod" is forbidden by
  interceptor rule R: reason`.
- With masks in the decision, the response body must be `application/json` without content
  coding (else MaskingError: withheld). A watch (verb watch, or `;stream=watch`) is masked
  event by event as each newline-ended JSON event arrives (each at most WATCH_EVENT_LIMIT),
  never buffering the stream; any other response is masked once whole (at most
  DOCUMENT_LIMIT). A mask's paths are relative to each object the response carries: the
  document, each list item (`items[*]`), each Table row's object (`rows[*].object`), and in a
  watch, each event's `object` (and the rows of a Table it carries). A pod log (text/plain,
  `pods/log`) is masked line by line by the masks' classifiers (a mask with paths cannot apply
  to it: withheld), each line at most LOG_LINE_LIMIT.
"""

from __future__ import annotations

import abc

import orjson

from interceptor.decision import Decision, MaskSpec
from interceptor.errors import ClientProtocolError, MaskingError
from interceptor.handlers.http.dialect import BodyFilter, Reply, RequestHead, ResponseHead
from interceptor.handlers.http.handler import HttpHandler
from interceptor.handlers.http.plain import JsonBodyMask
from interceptor.masking.column import ColumnMasker
from interceptor.masking.json_paths import JsonMask, mask_document
from interceptor.operations import KubeRequest, Operation, Pairs
from interceptor.policy.kube_request import go_query, kube_request
from interceptor.policy.kube_rules import describe

DOCUMENT_LIMIT = 64 * 1024 * 1024  # a masked response larger than this is withheld
WATCH_EVENT_LIMIT = 16 * 1024 * 1024  # a masked watch event larger than this ends the watch
LOG_LINE_LIMIT = 1024 * 1024  # a masked log line longer than this ends the log
OBJECT_ROOTS = ("", "items[*]", "rows[*].object")  # where a response carries objects
WATCH_ROOTS = tuple(f"object.{root}" if root else "object" for root in OBJECT_ROOTS)
JSON = "application/json"
# Status reasons by HTTP status (k8s.io/apimachinery pkg/apis/meta/v1 StatusReason)
STATUS_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
                  405: "MethodNotAllowed", 406: "NotAcceptable", 408: "Timeout", 409: "Conflict",
                  413: "RequestEntityTooLarge", 415: "UnsupportedMediaType", 422: "Invalid",
                  429: "TooManyRequests", 500: "InternalError", 502: "InternalError", 503: "ServiceUnavailable",
                  504: "Timeout"}


class KubernetesDialect:
    """The kubernetes Dialect for one flow (interceptor.handlers.http.dialect.Dialect)."""

    name = "kubernetes"

    def __init__(self, mask_key: bytes = b"") -> None:
        self.mask_key = mask_key  # HMAC key of mask style hash (interceptor.masking.key)

    def body_limit(self, head: RequestHead) -> int:
        return 0  # judged by method, path and query, as the API server authorizes

    def operation(self, head: RequestHead, body: bytes) -> KubeRequest:
        """The KubeRequest; ClientProtocolError where the server could read it otherwise."""
        return kube_request(head.method, head.path, go_query(head.target.partition("?")[2]))

    def request_headers(self, head: RequestHead, operation: Operation) -> Pairs:
        """The agent's headers with Accept asking for JSON only (json_accept)."""
        kept = tuple((key, value) for key, value in head.headers if key != "accept")
        return (*kept, ("accept", json_accept(head.header("accept"))))

    def refusal(self, head: RequestHead, body: bytes, status: int, message: str, rule: str | None) -> Reply:
        """A Status object with the refusal's status and message (the rule's name in it)."""
        try:
            operation: KubeRequest | None = self.operation(head, body)
        except ClientProtocolError:
            operation = None
        return Reply(status, (("content-type", JSON),), orjson.dumps(status_object(status, message, rule, operation)))

    def response_filter(self, head: RequestHead, operation: Operation, decision: Decision,
                        response: ResponseHead) -> BodyFilter | None:
        """None without masks; else the watch or document filter. MaskingError for a body
        that is not JSON or is content-coded."""
        if not decision.masks:
            return None
        rules = ", ".join(spec.rule for spec in decision.masks)
        content_type = response.header("content-type") or ""
        media, *parameters = (part.strip().lower() for part in content_type.split(";"))
        if isinstance(operation, KubeRequest) and operation.subresource == "log" and media == "text/plain":
            return _log_mask(decision.masks, rules, response, self.mask_key)
        if media != JSON:
            raise MaskingError(f"rule(s) {rules} mask this response, but its content type {content_type or '(none)'} "
                               "is not application/json; withheld")
        coding = (response.header("content-encoding") or "identity").strip().lower()
        if coding != "identity":
            raise MaskingError(f"rule(s) {rules} mask this response, but it is {coding}-encoded; withheld")
        watch = (isinstance(operation, KubeRequest) and operation.verb == "watch") or "stream=watch" in parameters
        if watch:
            return WatchEventMask([JsonMask.of(rooted(spec, WATCH_ROOTS), self.mask_key) for spec in decision.masks])
        masks = [JsonMask.of(rooted(spec, OBJECT_ROOTS), self.mask_key) for spec in decision.masks]
        return JsonBodyMask(masks, DOCUMENT_LIMIT)

    def audit_operation(self, operation: Operation) -> dict[str, object]:
        return operation.summary()


HANDLER = HttpHandler("kubernetes", lambda services: KubernetesDialect(services.mask_key))


def json_accept(accept: str | None) -> str:
    """An Accept value asking only for JSON: the `application/json` media ranges of `accept`
    with their parameters, in order; `application/json` when there are none (RFC 9110
    section 12.5.1)."""
    ranges = [part.strip() for part in (accept or "").split(",")]
    kept = [part for part in ranges if part.split(";")[0].strip().lower() == JSON]
    return ",".join(kept) or JSON


def rooted(spec: MaskSpec, roots: tuple[str, ...]) -> MaskSpec:
    """The mask with each path joined to each root (a mask without paths covers the whole body;
    a path that starts with `**` reaches every object from the first root already)."""
    if not spec.paths:
        return spec
    paths = tuple(_join(root, path) for path in spec.paths
                  for root in (roots[:1] if path.startswith("**") else roots))
    return MaskSpec(spec.columns, spec.classifiers, spec.style, spec.rule, spec.patterns, paths)


def _join(root: str, path: str) -> str:
    if not root:
        return path
    return root + path if path.startswith("[") else f"{root}.{path}"


def status_object(status: int, message: str, rule: str | None, operation: KubeRequest | None) -> dict[str, object]:
    """A metav1.Status for a refusal: for a 403 by a rule, `<request> is forbidden by
    interceptor rule <rule>: <reason>`; details name the object as the API server does
    (its name, API group, and resource as `kind`)."""
    if status == 403 and rule:
        prefix = f"permission denied by interceptor rule {rule!r}: "
        reason = message[len(prefix):] if message.startswith(prefix) else message
        what = f"{describe(operation)} is forbidden" if operation is not None else "forbidden"
        message = f"{what} by interceptor rule {rule}: {reason}"
    details: dict[str, object] = {}
    if operation is not None and operation.resource_request:
        details = {key: value for key, value in (("name", operation.name), ("group", operation.api_group),
                                                 ("kind", operation.resource)) if value}
    reason = STATUS_REASONS.get(status, "InternalError" if status >= 500 else "BadRequest")
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details, "code": status}


def _log_mask(masks: tuple[MaskSpec, ...], rules: str, response: ResponseHead, key: bytes) -> LogLineMask:
    if any(spec.paths for spec in masks):
        raise MaskingError(f"rule(s) {rules} mask JSON paths, which a pod log has none of; withheld")
    coding = (response.header("content-encoding") or "identity").strip().lower()
    if coding != "identity":
        raise MaskingError(f"rule(s) {rules} mask this log, but it is {coding}-encoded; withheld")
    return LogLineMask([ColumnMasker(spec.style, spec.classifiers, key) for spec in masks])


class _LineFilter(abc.ABC):
    """A BodyFilter that masks a body line by line as each newline-ended line arrives, never
    buffering more than one line (`limit` bytes; longer: MaskingError, `what` names it)."""

    what = "a line"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.masked = 0
        self._pending = bytearray()

    def feed(self, data: bytes) -> bytes:
        self._pending += data
        end = self._pending.rfind(b"\n")
        out = b""
        if end >= 0:
            lines = bytes(self._pending[:end + 1]).split(b"\n")[:-1]
            del self._pending[:end + 1]
            out = b"".join(self._event(line) + b"\n" for line in lines)
        if len(self._pending) > self.limit:
            raise MaskingError(f"{self.what} to mask is larger than {self.limit} bytes; the stream is ended")
        return out

    def end(self) -> bytes:
        rest = bytes(self._pending)
        self._pending.clear()
        return self._event(rest) if rest else b""

    @abc.abstractmethod
    def _event(self, line: bytes) -> bytes:
        """One line (without its newline), masked."""


class LogLineMask(_LineFilter):
    """A pod log (k8s.io/api core/v1 pods/log: text/plain) masked line by line by classifiers."""

    what = "a log line"

    def __init__(self, maskers: list[ColumnMasker], limit: int = LOG_LINE_LIMIT) -> None:
        super().__init__(limit)
        self.maskers = maskers

    def _event(self, line: bytes) -> bytes:
        for masker in self.maskers:
            masked = masker.mask(line)
            if masked is not None and masked != line:
                self.masked += 1
                line = masked
        return line


class WatchEventMask(_LineFilter):
    """A BodyFilter masking a watch stream (newline-delimited JSON events, k8s.io/apimachinery
    pkg/watch/json WatchEvent) as each event ends; blank lines pass. MaskingError for an event
    that is not JSON or is longer than `limit`, and for a stream that ends within an event
    that does not parse."""

    what = "a watch event"

    def __init__(self, masks: list[JsonMask], limit: int = WATCH_EVENT_LIMIT) -> None:
        super().__init__(limit)
        self.masks = masks

    def _event(self, line: bytes) -> bytes:
        if not line.strip():
            return line
        if len(line) > self.limit:
            raise MaskingError(f"a watch event to mask is larger than {self.limit} bytes; the watch is ended")
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise MaskingError(f"a watch event to mask is not valid JSON ({exc}); the watch is ended") from None
        event, count = mask_document(event, self.masks)
        self.masked += count
        return orjson.dumps(event)
