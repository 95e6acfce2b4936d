"""Masking values inside a JSON document by path: the bodies of `kubernetes`, `http` and `mcp`
resources (a mask rule's `mask: {paths: [...]}`, the Kubernetes Secret masks).

Path syntax (a small subset in the spirit of JSONPath, RFC 9535; no leading `$`):

    path    = step *( "." dotted / bracket ) [ "|base64" ]
    step    = dotted / bracket
    dotted  = name / "*" / "**"
    bracket = "[*]" / "[" index "]" / "[" quoted "]" / "[?" name "==" quoted "]"
    name    = 1*( ALPHA / DIGIT / "_" / "-" )      ; other keys must be quoted
    quoted  = a JSON string in double quotes ("a.b", "x\\"y")

    `name`, `["any key"]`  the object member of that name
    `*`                   every member of an object
    `[*]`, `[3]`          every element, or element 3 (from 0), of an array
    `**`                  zero or more levels down (object members and array elements)
    `[?kind=="Secret"]`   the current value only if it is an object whose member `kind` is that string
    `|base64`             the selected strings hold base64 (RFC 4648 section 4): the decoded bytes
                          are masked and the result encoded again, so typed clients still decode

Examples: `data.*`, `items[*].data`, `metadata.annotations["kubectl.kubernetes.io/last-applied-
configuration"]`, `**.password`, `**[?kind=="Secret"].data|base64`.

A selected value that is an object or an array is masked leaf by leaf (keys are kept); strings
are masked as their UTF-8 bytes, numbers and booleans as their JSON text (the result is a string,
or null for style `null`), nulls stay null. Styles and classifiers are those of
interceptor.masking (ColumnMasker: redact, partial, hash, null). Each leaf is masked at most once
however many paths select it: by the first mask that masks it whole, or whose classifiers
changed it.

API (what the kubernetes and mcp dialects use):

- `compile_path(text) -> JsonPath`: ValueError naming the position for a bad path;
- `JsonMask.of(spec, key)`: a MaskSpec's paths, style and classifiers ready to apply (MaskingError
  for an unknown style or classifier, or style hash without a key); with no paths it masks what
  the classifiers find in every string leaf of the document;
- `mask_document(value, masks) -> (value, count)`: an orjson-loaded value masked (in place where
  it is an object or array) by each JsonMask in turn, and how many leaves changed.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from interceptor.decision import MaskSpec
from interceptor.errors import MaskingError
from interceptor.masking.column import ColumnMasker

__all__ = ["JsonMask", "JsonPath", "compile_path", "mask_document"]

_NAME = re.compile(r"[A-Za-z0-9_-]+")
_INDEX = re.compile(r"\[([0-9]+)\]")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_BASE64_SUFFIX = "|base64"


@dataclass(frozen=True, slots=True)
class Key:
    """The member `name` of an object."""

    name: str


@dataclass(frozen=True, slots=True)
class AnyKey:
    """Every member of an object."""


@dataclass(frozen=True, slots=True)
class Index:
    """Element `position` of an array (None: every element)."""

    position: int | None


@dataclass(frozen=True, slots=True)
class Descend:
    """Zero or more levels down."""


@dataclass(frozen=True, slots=True)
class Where:
    """The current value, only when it is an object whose member `name` equals `value`."""

    name: str
    value: str


Step = Key | AnyKey | Index | Descend | Where


@dataclass(frozen=True, slots=True)
class JsonPath:
    """A compiled path: `text` as written, its steps, and whether its strings are base64."""

    text: str
    steps: tuple[Step, ...]
    base64: bool = False


def compile_path(text: str) -> JsonPath:
    """The path `text` in the syntax above; ValueError saying what is wrong and where."""
    body, encoded = (text[: -len(_BASE64_SUFFIX)], True) if text.endswith(_BASE64_SUFFIX) else (text, False)
    steps: list[Step] = []
    position = 0
    while position < len(body):
        if body.startswith("[", position):
            step, position = _bracket(body, position, text)
        else:
            if steps:
                if body[position] != ".":
                    raise ValueError(f"JSON path {text!r}: expected '.' or '[' at position {position}")
                position += 1
            step, position = _dotted(body, position, text)
        steps.append(step)
    if not steps:
        raise ValueError(f"JSON path {text!r} is empty")
    return JsonPath(text, tuple(steps), encoded)


def _dotted(body: str, position: int, text: str) -> tuple[Step, int]:
    if body.startswith("**", position):
        return Descend(), position + 2
    if body.startswith("*", position):
        return AnyKey(), position + 1
    match = _NAME.match(body, position)
    if match is None:
        raise ValueError(f"JSON path {text!r}: expected a name (letters, digits, _ -), '*' or '**' at position "
                         f"{position}; quote other keys: [\"key\"]")
    return Key(match.group()), match.end()


def _bracket(body: str, position: int, text: str) -> tuple[Step, int]:
    if body.startswith("[*]", position):
        return Index(None), position + 3
    index = _INDEX.match(body, position)
    if index is not None:
        return Index(int(index.group(1))), index.end()
    if body.startswith("[?", position):
        name = _NAME.match(body, position + 2)
        if name is not None and body.startswith("==", name.end()):
            value, end = _quoted(body, name.end() + 2, text)
            if body.startswith("]", end):
                return Where(name.group(), value), end + 1
        raise ValueError(f"JSON path {text!r}: expected [?name==\"value\"] at position {position}")
    key, end = _quoted(body, position + 1, text)
    if not body.startswith("]", end):
        raise ValueError(f"JSON path {text!r}: expected ']' at position {end}")
    return Key(key), end + 1


def _quoted(body: str, position: int, text: str) -> tuple[str, int]:
    match = _QUOTED.match(body, position)
    if match is None:
        raise ValueError(f"JSON path {text!r}: expected [*], [index], [\"key\"] or [?name==\"value\"] at "
                         f"position {position - 1}")
    try:
        value = orjson.loads(match.group())
    except orjson.JSONDecodeError:
        raise ValueError(f"JSON path {text!r}: bad escape in the quoted key at position {position}") from None
    assert isinstance(value, str)
    return value, match.end()


Target = tuple[Any, Any]  # (the dict or list holding a value, its key or index)


# id of an object or array -> where it and every value under it sit, and the objects and arrays of those
Descendants = dict[int, tuple[list[Target], list[Target]]]


def select(holder: list[Any], path: JsonPath, cache: Descendants | None = None) -> list[Target]:
    """Where the values `path` selects sit under holder[0] (the document, in a one-element
    list so that it can be selected and replaced too), each once. Iterative: documents as
    deep as orjson reads (1024 levels) need no recursion. `cache` keeps what a `**` walked,
    for other paths over the same document (valid while its objects and arrays stay)."""
    cache = {} if cache is None else cache
    found: list[Target] = []
    seen: set[tuple[int, Any, int]] = set()
    stack: list[tuple[Any, Any, int]] = [(holder, 0, 0)]
    steps = path.steps
    while stack:
        container, key, i = stack.pop()
        state = (id(container), key, i)
        if state in seen:
            continue
        seen.add(state)
        node = container[key]
        if i == len(steps):
            found.append((container, key))
            continue
        step = steps[i]
        if isinstance(step, Key):
            if isinstance(node, dict) and step.name in node:
                stack.append((node, step.name, i + 1))
        elif isinstance(step, AnyKey):
            if isinstance(node, dict):
                stack.extend((node, k, i + 1) for k in node)
        elif isinstance(step, Index):
            if isinstance(node, list):
                if step.position is None:
                    stack.extend((node, j, i + 1) for j in range(len(node)))
                elif step.position < len(node):
                    stack.append((node, step.position, i + 1))
        elif isinstance(step, Where):
            if isinstance(node, dict) and node.get(step.name) == step.value:
                stack.append((container, key, i + 1))
        else:
            values, containers = _descendants(container, key, cache)
            after = steps[i + 1] if i + 1 < len(steps) else None
            if after is None:
                stack.extend((c, k, i + 1) for c, k in values)
            elif isinstance(after, Where):  # the filter at once, rather than a state per object
                stack.extend((c, k, i + 2) for c, k in containers
                             if isinstance(v := c[k], dict) and v.get(after.name) == after.value)
            else:  # the steps after `**` all need an object or an array
                stack.extend((c, k, i + 1) for c, k in containers)
    return found


def _descendants(container: Any, key: Any, cache: Descendants) -> tuple[list[Target], list[Target]]:
    """container[key] and every value under it, as (holder, key), and those of them that are
    objects or arrays; kept in `cache`."""
    node = container[key]
    if not isinstance(node, (dict, list)):
        return [(container, key)], []
    known = cache.get(id(node))
    if known is not None:
        return [(container, key), *known[0][1:]], [(container, key), *known[1][1:]]
    values: list[Target] = []
    containers: list[Target] = []
    stack = [(container, key)]
    while stack:
        holder, at = stack.pop()
        values.append((holder, at))
        value = holder[at]
        if isinstance(value, dict):
            containers.append((holder, at))
            stack.extend((value, k) for k in value)
        elif isinstance(value, list):
            containers.append((holder, at))
            stack.extend((value, j) for j in range(len(value)))
    cache[id(node)] = (values, containers)
    return values, containers


def _children(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        yield from node
    elif isinstance(node, list):
        yield from range(len(node))


@dataclass(frozen=True, slots=True)
class JsonMask:
    """One MaskSpec made ready: its compiled paths (empty: every string leaf), the masker of
    its style (whole values when it has no classifiers, else only the spans they find)."""

    rule: str
    paths: tuple[JsonPath, ...]
    masker: ColumnMasker

    @classmethod
    def of(cls, spec: MaskSpec, key: bytes = b"") -> JsonMask:
        """MaskingError for a path that does not compile (the loader checks them first), an
        unknown style or classifier, or style hash without `key`."""
        try:
            paths = tuple(compile_path(p) for p in spec.paths)
        except ValueError as exc:
            raise MaskingError(f"rule {spec.rule!r}: {exc}") from None
        return cls(spec.rule, paths, ColumnMasker(spec.style, spec.classifiers, key))

    def targets(self, holder: list[Any], cache: Descendants) -> Iterator[tuple[Target, bool]]:
        """Each leaf under holder[0] this mask is about, and whether it holds base64."""
        if not self.paths:
            yield from ((leaf, False) for leaf in _leaves(holder, 0))
            return
        for path in self.paths:
            for container, key in select(holder, path, cache):
                yield from ((leaf, path.base64) for leaf in _leaves(container, key))


def _leaves(container: Any, key: Any) -> Iterator[Target]:
    """The scalar values at or under container[key]."""
    stack = [(container, key)]
    while stack:
        holder, at = stack.pop()
        node = holder[at]
        if isinstance(node, (dict, list)):
            stack.extend((node, child) for child in _children(node))
        else:
            yield holder, at


def mask_document(document: Any, masks: Sequence[JsonMask]) -> tuple[Any, int]:
    """`document` (as orjson.loads returns it) masked by each mask in turn, and how many
    leaves changed. Objects and arrays are changed in place; the document itself is replaced
    only when it is a selected scalar. A leaf is masked once: by the first mask that masks it
    whole or changes it. MaskingError from a style (partial of bytes that are not UTF-8)."""
    done: set[tuple[int, Any]] = set()
    holder = [document]
    cache: Descendants = {}
    count = 0
    for mask in masks:
        for (container, key), encoded in mask.targets(holder, cache):
            where = (id(container), key)
            if where in done:
                continue
            value = container[key]
            masked = _mask_value(mask.masker, value, encoded)
            changed = masked != value or type(masked) is not type(value)
            if changed or not mask.masker.classifiers:
                done.add(where)  # a leaf classifiers left alone may still be masked whole by a later mask
            if changed:
                container[key] = masked
                count += 1
    return holder[0], count


def _mask_value(masker: ColumnMasker, value: Any, encoded: bool) -> Any:
    """The masked leaf: a string, or None (JSON null)."""
    if value is None:
        return None
    encoded = encoded and isinstance(value, str)  # a number or boolean is never base64 text
    raw = value.encode("utf-8") if isinstance(value, str) else orjson.dumps(value)
    if encoded:
        try:
            raw = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            encoded = False  # not base64 after all: mask its text instead
    masked = masker.mask(raw)
    if masked is None:
        return None
    if masked == raw and masker.classifiers:
        return value  # nothing found
    if encoded:
        return base64.b64encode(masked).decode("ascii")
    return masked.decode("utf-8", "replace")
