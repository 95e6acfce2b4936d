"""The Dialect of `protocol: http` resources: a request is an HttpRequest (method, path, query,
Host), a refusal a small JSON body `{"error": message, "rule": rule}` with its status, and a
response body is only touched when the decision carries masks: then it must be JSON
(`application/json` or `+json`, RFC 8259), not content-coded, and is masked by the rules' JSON
paths and classifiers (interceptor.masking.json_paths) once whole (up to MASKED_BODY_LIMIT).

Requests the server could run as something other than what is judged are refused
(ClientProtocolError, 400):

- a path holding a non-ASCII character that some server folds to ASCII (`ı` and `ſ` upper-
  case to `I` and `S`, the Kelvin sign lower-cases to `k`, `ß` to `ss`, fullwidth forms and
  ligatures are ASCII under NFKC): such a path may route where a rule names the ASCII path;
- a method override (`_method`, Salesforce's `_HttpMethod`, ServiceStack's
  `X-Http-Method-Override`) as a query parameter of any request, or as a field of a POST
  body some server parses into parameters (body_kind): urlencoded (also without a
  Content-Type, which Rack reads as a form), multipart (a part's `name`), and JSON (a
  top-level key, which Laravel and Phoenix read). Rails (Rack::MethodOverride), Symfony
  and Laravel, Spring's HiddenHttpMethodFilter, ASP.NET Core, Phoenix (Plug.MethodOverride)
  and Express's method-override run such a POST as DELETE, PUT or PATCH; only POST bodies
  are read, as every one of them overrides POST alone (Express's and Koa's by default). Names are compared as PHP and
  ASP.NET read them: case-insensitively, leading spaces dropped, `.`, ` ` and `-` as `_`,
  up to a `[`. A plain `method` is no override in any of them (and a common field name).
  Such a body is read whole before judging, up to FORM_BODY_LIMIT (a longer one is refused
  413: what cannot be read cannot be cleared); other bodies (an upload sent as itself,
  `application/octet-stream`, any PUT) stream without being read. Such a body that cannot
  be read for an override is refused too: several Content-Type headers, a Content-Encoding,
  a charset that does not spell ASCII as ASCII (refuse_body_override).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, unquote_plus

import orjson

from interceptor.decision import Decision
from interceptor.errors import ClientProtocolError, MaskingError
from interceptor.handlers.http.dialect import BodyFilter, Reply, RequestHead, ResponseHead
from interceptor.masking.json_paths import JsonMask, mask_document
from interceptor.operations import HttpRequest, Operation, Pairs

MASKED_BODY_LIMIT = 32 * 1024 * 1024  # a masked response larger than this is withheld (MaskingError)
FORM_BODY_LIMIT = 8 * 1024 * 1024  # a POST form or JSON body read for a method override (PHP's post_max_size)
OVERRIDE_NAMES = frozenset({"_method", "_httpmethod", "x_http_method_override", "x_http_method", "x_method_override"})
_NAME_SPELLING = re.compile(r"[ .\-]")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_DISPOSITION = re.compile(r"(?i)[ \t]*content-disposition[ \t]*:")
_NAME_PARAM = re.compile(r'(?i)(?:^|[;:,\s])name(?:\*(\d+))?(\*)?\s*=\s*("(?:[^"\\]|\\.)*"?|\'[^\']*\'?|[^;,\s]*)')
_ESCAPED = re.compile(r"\\(.)")
_CHARSET = re.compile(r'(?i);\s*charset\s*=\s*"?([^";\s]*)')
_ASCII = "".join(map(chr, range(0x20, 0x7F)))


def is_json(content_type: str | None) -> bool:
    """`application/json` or a `+json` type (RFC 6839 section 3.1), parameters ignored."""
    if content_type is None:
        return False
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class JsonBodyMask:
    """A BodyFilter masking a JSON body by JsonMasks: the body is kept until it ends, then
    parsed, masked and sent whole. MaskingError when it is not JSON or passes `limit`."""

    what = "a response to mask"  # how errors name the body

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
            raise MaskingError(f"{self.what} is not valid JSON ({exc}); withheld") from None
        return orjson.dumps(self.filtered(document))

    def filtered(self, document: Any) -> Any:
        """The parsed body as it is sent on (masked; `masked` counts what changed)."""
        document, self.masked = mask_document(document, self.masks)
        return document


def folds_to_ascii(char: str) -> bool:
    """Whether some server could read the non-ASCII `char` as ASCII: its NFKC form (UAX #15)
    or its upper, lower or folded case (Unicode full case mappings) holds an ASCII character."""
    return not char.isascii() and any(
        c.isascii() for form in (unicodedata.normalize("NFKC", char), char.upper(), char.lower(), char.casefold())
        for c in form)


def is_override(name: str) -> bool:
    """Whether a parameter `name` is a method override as some server reads it (the module
    docstring: OVERRIDE_NAMES, case-insensitive, PHP's and ASP.NET's spellings)."""
    base = unicodedata.normalize("NFKC", name).partition("\x00")[0].lstrip(" ").partition("[")[0]  # PHP: a C string
    return _NAME_SPELLING.sub("_", base).upper().casefold() in OVERRIDE_NAMES


def body_kind(head: RequestHead) -> str | None:
    """How some server parses a POST body into parameters: "form" (urlencoded, or no or an
    empty Content-Type, as Rack reads it), "multipart" (any multipart type, as Rack reads
    them), "json" (a Content-Type holding `/json` or `+json`, as Laravel's isJson reads it),
    None (not into parameters), or "ambiguous" (several Content-Type headers, which servers
    pick differently)."""
    if head.method.upper() != "POST":
        return None
    types = [value for key, value in head.headers if key == "content-type"]
    if len(types) > 1:
        return "ambiguous"
    content_type = types[0].lower() if types else ""
    media = content_type.partition(";")[0].strip()
    if not media or media.startswith("application/x-www-form-urlencoded"):
        return "form"
    if media.startswith("multipart/"):
        return "multipart"
    return "json" if "/json" in content_type or "+json" in content_type else None


def body_names(kind: str, body: bytes) -> Iterator[str]:
    """The parameter names a server reads from a `kind` body (body_kind): every urlencoded
    name (split on `&` and `;`), every `name` of a Content-Disposition line of a multipart
    body (quoted, escaped, RFC 2231 encoded or continued), or a JSON object's top-level keys.
    ClientProtocolError for a JSON body that is not JSON."""
    text = body.decode("utf-8", "replace")
    if kind == "form":
        yield from (unquote_plus(part.partition("=")[0]) for part in re.split(r"[&;]", text))
    elif kind == "multipart":
        yield from _part_names(text)
    else:
        try:
            document = json.loads(body.decode("utf-8"), object_pairs_hook=_JsonObject)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ClientProtocolError(f"the body is declared JSON but is not valid UTF-8 JSON ({exc})") from None
        if isinstance(document, _JsonObject):
            yield from (key for key, _ in document)


class _JsonObject(list[tuple[str, object]]):
    """A JSON object as its pairs, duplicate keys kept."""


def _part_names(text: str) -> Iterator[str]:
    lines = _LINE_BREAK.split(text)
    for index, line in enumerate(lines):
        if not _DISPOSITION.match(line):
            continue
        value = line
        for more in lines[index + 1:]:
            if not more.startswith((" ", "\t")):
                break
            value += more
        pieces: list[tuple[int, str]] = []
        for param in _NAME_PARAM.finditer(value):
            section, extended, raw = param.groups()
            if raw.startswith("'"):  # PHP's multipart parser takes '...' quoting too (main/rfc1867.c)
                raw = raw.strip("'")
            name = _ESCAPED.sub(r"\1", raw[1:-1] if raw.startswith('"') and raw.endswith('"') else raw.strip('"'))
            if extended:
                name = name.rpartition("'")[2] if name.count("'") >= 2 else name
            name = unquote(name)
            yield name
            if section is not None:
                pieces.append((int(section), name))
        yield "".join(name for _, name in sorted(pieces))


def refuse_body_override(head: RequestHead, body: bytes) -> None:
    """Raise ClientProtocolError (400) when a POST body some server parses into parameters
    (body_kind) carries a method override (is_override), or cannot be read for one: several
    Content-Type headers, a Content-Encoding (servers that decode request bodies would read
    what is hidden here), a charset that does not spell ASCII as ASCII (UTF-16, UTF-7)."""
    kind = body_kind(head)
    if kind is None or not body:
        return
    if kind == "ambiguous":
        raise ClientProtocolError("the request carries several Content-Type headers, which servers pick differently")
    coding = head.header("content-encoding")
    if coding is not None and coding.strip().lower() != "identity":
        raise ClientProtocolError(f"a {coding}-encoded form or JSON POST body cannot be checked for a method "
                                  "override; send it unencoded")
    charset = _CHARSET.search(head.header("content-type") or "")
    if charset is not None and not _spells_ascii(charset.group(1)):
        raise ClientProtocolError(f"a form or JSON POST body in charset {charset.group(1)!r} cannot be checked for "
                                  "a method override; send it in UTF-8")
    for name in body_names(kind, body):
        if is_override(name):
            raise ClientProtocolError(f"the body carries a method override ({name!r}), which servers run as "
                                      "another method; send that method itself")


def _spells_ascii(charset: str) -> bool:
    try:
        return _ASCII.encode(charset) == _ASCII.encode()
    except (LookupError, UnicodeError):
        return False


class PlainDialect:
    """The http Dialect for one flow (interceptor.handlers.http.dialect.Dialect)."""

    name = "http"

    def __init__(self, mask_key: bytes = b"") -> None:
        self.mask_key = mask_key  # HMAC key of mask style hash (interceptor.masking.key)

    def body_limit(self, head: RequestHead) -> int:
        return 0 if body_kind(head) is None else FORM_BODY_LIMIT

    def operation(self, head: RequestHead, body: bytes) -> Operation:
        lookalikes = [] if head.path.isascii() else sorted({c for c in head.path if folds_to_ascii(c)})
        if lookalikes:
            raise ClientProtocolError(f"the path holds {', '.join(map(repr, lookalikes))}, which some servers "
                                      "read as ASCII letters (case or compatibility folding)")
        for name, _ in head.query:
            if is_override(name):
                raise ClientProtocolError(f"the query carries a method override ({name!r}), which servers run "
                                          "as another method; send that method itself")
        refuse_body_override(head, body)
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
        return JsonBodyMask([JsonMask.of(spec, self.mask_key) for spec in decision.masks])

    def audit_operation(self, operation: Operation) -> dict[str, object]:
        return operation.summary()

