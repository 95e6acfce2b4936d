"""The Dialect of `protocol: http` resources: a request is an HttpRequest (method, path, query,
Host), a refusal a small JSON body `{"error": message, "rule": rule}` with its status, and a
response body is only touched when the decision carries masks: then it must be JSON
(`application/json` or `+json`, RFC 8259), not content-coded, and is masked by the rules' JSON
paths and classifiers (interceptor.masking.json_paths) once whole (up to MASKED_BODY_LIMIT).
"""

from __future__ import annotations

import orjson

from interceptor.decision import Decision
from interceptor.errors import MaskingError
from interceptor.handlers.http.dialect import BodyFilter, Reply, RequestHead, ResponseHead
from interceptor.masking.json_paths import JsonMask, mask_document
from interceptor.operations import HttpRequest, Operation, Pairs

MASKED_BODY_LIMIT = 32 * 1024 * 1024  # a masked response larger than this is withheld (MaskingError)


def is_json(content_type: str | None) -> bool:
    """`application/json` or a `+json` type (RFC 6839 section 3.1), parameters ignored."""
    if content_type is None:
        return False
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class JsonBodyMask:
    """A BodyFilter masking a JSON body by JsonMasks: the body is kept until it ends, then
    parsed, masked and sent whole. MaskingError when it is not JSON or passes `limit`."""

    def __init__(self, masks: list[JsonMask], limit: int = MASKED_BODY_LIMIT) -> None:
        self.masks = masks
        self.limit = limit
        self.masked = 0
        self._body = bytearray()

    def feed(self, data: bytes) -> bytes:
        self._body += data
        if len(self._body) > self.limit:
            raise MaskingError(f"a response to mask is larger than {self.limit} bytes; withheld")
        return b""

    def end(self) -> bytes:
        if not self._body:
            return b""
        try:
            document = orjson.loads(self._body)
        except orjson.JSONDecodeError as exc:
            raise MaskingError(f"a response to mask is not valid JSON ({exc}); withheld") from None
        document, self.masked = mask_document(document, self.masks)
        return orjson.dumps(document)


class PlainDialect:
    """The http Dialect for one flow (interceptor.handlers.http.dialect.Dialect)."""

    name = "http"

    def body_limit(self, head: RequestHead) -> int:
        return 0  # judged by method, path and Host: no body needed

    def operation(self, head: RequestHead, body: bytes) -> Operation:
        return HttpRequest(head.method, head.path, head.query, head.host)

    def request_headers(self, head: RequestHead, operation: Operation) -> Pairs:
        return head.headers

    def refusal(self, head: RequestHead, body: bytes, status: int, message: str, rule: str | None) -> Reply:
        return Reply(status, (("content-type", "application/json"),),
                     orjson.dumps({"error": message, "rule": rule}) + b"\n")

    def response_filter(self, head: RequestHead, operation: Operation, decision: Decision,
                        response: ResponseHead) -> BodyFilter | None:
        if not decision.masks:
            return None
        rules = ", ".join(spec.rule for spec in decision.masks)
        if not is_json(response.header("content-type")):
            raise MaskingError(f"rule(s) {rules} mask this response, but its content type "
                               f"{response.header('content-type') or '(none)'} is not JSON; withheld")
        coding = response.header("content-encoding")
        if coding is not None and coding.strip().lower() != "identity":
            raise MaskingError(f"rule(s) {rules} mask this response, but it is {coding}-encoded; withheld")
        return JsonBodyMask([JsonMask.of(spec) for spec in decision.masks])

    def audit_operation(self, operation: Operation) -> dict[str, object]:
        return operation.summary()

