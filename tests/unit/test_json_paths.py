"""JSON path masks (interceptor.masking.json_paths): the path syntax, what each step selects,
masking styles on strings, numbers, base64 values and whole subtrees, and the Kubernetes
shapes Secret values come back in (a Secret, a list, a watch event, a Table row, the
last-applied annotation, a Secret nested in another object)."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from interceptor.decision import MaskSpec
from interceptor.errors import MaskingError
from interceptor.masking.json_paths import (
    AnyKey, Descend, Index, JsonMask, Key, Where, compile_path, mask_document, select,
)

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
SECRET_PATHS = ('**[?kind=="Secret"].data|base64', '**[?kind=="Secret"].stringData',
                f'**[?kind=="Secret"].metadata.annotations["{LAST_APPLIED}"]')


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def masked(document: Any, *specs: MaskSpec, key: bytes = b"") -> tuple[Any, int]:
    return mask_document(document, [JsonMask.of(spec, key) for spec in specs])


def secret(name: str = "db", password: str = "hunter2") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "annotations": {LAST_APPLIED: f'{{"data":{{"password":"{b64(password)}"}}}}',
                                                       "team": "core"}},
            "type": "Opaque", "data": {"password": b64(password), "user": b64("admin")},
            "stringData": {"token": "plain-token"}}


@pytest.mark.parametrize(("text", "steps", "encoded"), [
    ("data", (Key("data"),), False),
    ("data.*", (Key("data"), AnyKey()), False),
    ("items[*].data", (Key("items"), Index(None), Key("data")), False),
    ("items[2].data", (Key("items"), Index(2), Key("data")), False),
    ('metadata.annotations["kubectl.kubernetes.io/last-applied-configuration"]',
     (Key("metadata"), Key("annotations"), Key(LAST_APPLIED)), False),
    ('["a\\"b"].c', (Key('a"b'), Key("c")), False),
    ("**.password", (Descend(), Key("password")), False),
    ('**[?kind=="Secret"].data|base64', (Descend(), Where("kind", "Secret"), Key("data")), True),
    ("[*]", (Index(None),), False),
    ("rows[*].object.metadata", (Key("rows"), Index(None), Key("object"), Key("metadata")), False),
])
def test_compile(text: str, steps: tuple[object, ...], encoded: bool) -> None:
    path = compile_path(text)
    assert path.steps == steps
    assert path.base64 is encoded
    assert path.text == text


@pytest.mark.parametrize(("text", "where"), [
    ("", "empty"),
    ("a..b", "position 2"),
    ("a.b c", "position 3"),
    ("a[", "position 1"),
    ('a["x"', "position 5"),
    ("a[?kind]", "position 1"),
    ('a[?kind=="x"', "position 1"),
    ("a.kubectl.io/x", "position 12"),
    ("|base64", "empty"),
    ('["\\q"]', "bad escape"),
])
def test_bad_paths_say_where(text: str, where: str) -> None:
    with pytest.raises(ValueError, match=where):
        compile_path(text)


def test_select_each_kind_of_step() -> None:
    document: dict[str, Any] = {"a": {"x": 1, "y": [10, 20, {"x": 2}]}, "b": [{"kind": "K", "x": 3}, {"kind": "L", "x": 4}]}
    holder = [document]

    def values(text: str) -> list[Any]:
        return sorted(str(container[key]) for container, key in select(holder, compile_path(text)))

    assert values("a.x") == ["1"]
    assert values("a.*") == ["1", str([10, 20, {"x": 2}])]
    assert values("a.y[*]") == ["10", "20", "{'x': 2}"]
    assert values("a.y[1]") == ["20"]
    assert values("a.y[9]") == []
    assert values("**.x") == ["1", "2", "3", "4"]
    assert values('b[*][?kind=="K"].x') == ["3"]
    assert values('**[?kind=="L"].x') == ["4"]
    assert values("a.x.*") == []  # a scalar has no members
    assert values("**") == sorted(str(v) for v in [document, document["a"], 1, document["a"]["y"], 10, 20,
                                                    {"x": 2}, 2, document["b"], *document["b"], "K", 3, "L", 4])


def test_descend_then_filter_and_shared_walks() -> None:
    document = {"items": [{"kind": "Secret", "data": {"a": "x"}}, {"kind": "Pod", "data": {"a": "y"}},
                          [{"kind": "Secret", "data": "z"}]]}
    holder = [document]
    cache: dict[int, Any] = {}
    first = select(holder, compile_path('**[?kind=="Secret"].data'), cache)
    assert sorted(str(c[k]) for c, k in first) == ["z", "{'a': 'x'}"]
    assert len(cache) == 1  # the walk under the document is kept for the next path
    again = select(holder, compile_path("**.data.a"), cache)
    assert sorted(c[k] for c, k in again) == ["x", "y"]
    assert len(cache) == 1


def test_redact_whole_subtree_keeps_keys_and_counts_leaves() -> None:
    document = {"data": {"a": "x", "b": {"c": "y", "d": [1, True, None]}}, "keep": "z"}
    result, count = masked(document, MaskSpec(paths=("data",), rule="r"))
    assert result == {"data": {"a": "****", "b": {"c": "****", "d": ["****", "****", None]}}, "keep": "z"}
    assert count == 4  # the null stays null


@pytest.mark.parametrize(("style", "expected"), [
    ("redact", "****"),
    ("null", None),
    ("partial", "****5678"),
])
def test_styles(style: str, expected: object) -> None:
    result, count = masked({"token": "abcd12345678"}, MaskSpec(paths=("token",), style=style, rule="r"))
    assert result == {"token": expected}
    assert count == 1


def test_hash_needs_a_key_and_is_stable() -> None:
    with pytest.raises(MaskingError, match="hash"):
        JsonMask.of(MaskSpec(paths=("a",), style="hash", rule="r"))
    first, _ = masked({"a": "v", "b": "v"}, MaskSpec(paths=("*",), style="hash", rule="r"), key=b"k")
    assert first["a"] == first["b"] != "v"
    assert len(first["a"]) == 16


def test_base64_values_stay_base64() -> None:
    result, count = masked({"data": {"p": b64("hunter2"), "bad": "not base64!"}},
                           MaskSpec(paths=("data|base64",), rule="r"))
    assert base64.b64decode(result["data"]["p"]) == b"****"
    assert result["data"]["bad"] == "****"  # not base64: its text is masked instead
    assert count == 2
    numbers, _ = masked({"data": {"n": 7, "b": True}}, MaskSpec(paths=("data|base64",), rule="r"))
    assert numbers == {"data": {"n": "****", "b": "****"}}  # never base64 text: masked as their JSON text


def test_classifiers_mask_spans_in_every_string_leaf() -> None:
    document = {"note": "mail ada@example.com now", "n": 4111111111111111, "list": ["card 4111 1111 1111 1111"],
                "plain": "nothing"}
    result, count = masked(document, MaskSpec(classifiers=("email", "card"), rule="r"))
    assert result == {"note": "mail **** now", "n": "****", "list": ["card ****"], "plain": "nothing"}
    assert count == 3


def test_classifiers_within_paths_and_base64() -> None:
    document = {"data": {"mail": b64("to ada@example.com")}, "other": "ada@example.com"}
    result, count = masked(document, MaskSpec(paths=("data|base64",), classifiers=("email",), rule="r"))
    assert base64.b64decode(result["data"]["mail"]) == b"to ****"
    assert result["other"] == "ada@example.com"
    assert count == 1


def test_a_leaf_is_masked_once_and_classifiers_do_not_shield_it() -> None:
    document = {"data": {"a": "plain", "b": "ada@example.com"}}
    result, count = masked(document, MaskSpec(classifiers=("email",), style="partial", rule="first"),
                           MaskSpec(paths=("data", "data.a", "**.a"), rule="second"))
    assert result == {"data": {"a": "****", "b": "a***@example.com"}}
    assert count == 2


def test_top_level_scalar_can_be_selected() -> None:
    result, count = masked("secret text", MaskSpec(paths=("**",), rule="r"))
    assert (result, count) == ("****", 1)


def test_unknown_style_or_classifier_is_a_masking_error() -> None:
    with pytest.raises(MaskingError, match="style"):
        JsonMask.of(MaskSpec(paths=("a",), style="blur", rule="r"))
    with pytest.raises(MaskingError, match="classifier"):
        JsonMask.of(MaskSpec(classifiers=("phone",), rule="r"))
    with pytest.raises(MaskingError, match="rule 'r'"):
        JsonMask.of(MaskSpec(paths=("a..b",), rule="r"))


def secret_mask() -> MaskSpec:
    return MaskSpec(paths=SECRET_PATHS, rule="kubernetes-secret-values")


def assert_secret_masked(obj: dict[str, Any]) -> None:
    assert {k: base64.b64decode(v) for k, v in obj["data"].items()} == {"password": b"****", "user": b"****"}
    assert obj["stringData"] == {"token": "****"}
    assert obj["metadata"]["annotations"] == {LAST_APPLIED: "****", "team": "core"}
    assert obj["metadata"]["name"] == "db"


def test_secret_shapes() -> None:
    event = {"type": "ADDED", "object": secret()}
    listed = {"kind": "List", "items": [secret(), {"kind": "ConfigMap", "data": {"k": "v"}}]}
    table = {"kind": "Table", "rows": [{"cells": ["db"], "object": secret()}]}
    nested = {"kind": "Wrapper", "spec": {"template": [{"inner": secret()}]}}
    for document, where in ((secret(), ()), (event, ("object",)), (listed, ("items", 0)), (table, ("rows", 0, "object")),
                            (nested, ("spec", "template", 0, "inner"))):
        result, count = masked(orjson.loads(orjson.dumps(document)), secret_mask())
        obj = result
        for step in where:
            obj = obj[step]
        assert_secret_masked(obj)
        assert count == 4
    listed_result, _ = masked(listed, secret_mask())
    assert listed_result["items"][1] == {"kind": "ConfigMap", "data": {"k": "v"}}
