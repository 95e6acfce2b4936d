"""The documentation stays true: the committed policy reference is what its generator makes,
every `interceptor ...` command the docs show exists in the CLI with the options shown, every
CLI command is documented, `make` targets exist, and the policies, identity blocks, settings
and examples the docs show pass the same checks the daemon and `interceptor policy` apply."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import click
import pytest
import yaml
from click.testing import CliRunner

from interceptor.cli import main
from interceptor.config import load_settings
from interceptor.identity.config import parse_identity_config

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GENERATOR = ROOT / "scripts" / "gen_policy_reference.py"
EXAMPLES = ROOT / "policy" / "examples"
DOC_FILES = ("guide.md", "architecture.md", "policy-reference.md")

FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
# `interceptor` as a command word (not part of a path or a module name), then its arguments
# up to the end of the line or a shell operator or comment.
INVOCATION = re.compile(r"(?:^|(?<=[\s/]))interceptor((?:[ \t]+[^\s|;&#>`]+)+)")
COMMENT = re.compile(r"(?:^|\s)#")  # a shell comment: prose, not a command
MAKE = re.compile(r"\bmake\s+([a-z][\w-]*)")
NOT_YET = re.compile(r"not yet", re.I)


def doc(name: str) -> str:
    path = DOCS / name
    assert path.exists(), f"missing documentation file {path.relative_to(ROOT)}"
    return path.read_text()


def generator() -> ModuleType:
    assert GENERATOR.exists(), f"missing {GENERATOR.relative_to(ROOT)}, which generates docs/policy-reference.md"
    spec = importlib.util.spec_from_file_location("gen_policy_reference", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def yaml_blocks(text: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang == "yaml"]


def code_by_line(text: str) -> list[tuple[str, str]]:
    """(code, the line it is on): whole lines inside non-YAML fences, inline spans elsewhere."""
    found, fence = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
        elif fence is not None:
            if fence not in ("yaml", "json"):
                found.append((line, line))
        else:
            found += [(span, line) for span in INLINE.findall(line)]
    return found


def invocations(text: str) -> list[list[str]]:
    found = []
    for code, _ in code_by_line(text):
        found += [match.split() for match in INVOCATION.findall(COMMENT.split(code, 1)[0])]
    return found


def _option(command: click.Command, name: str) -> click.Option | None:
    for param in command.params:
        if isinstance(param, click.Option) and name in (*param.opts, *param.secondary_opts):
            return param
    return None


def check_invocation(tokens: list[str]) -> tuple[str, str | None]:
    """(command path, problem or None) for `interceptor TOKENS` against the click tree."""
    command: click.Command = main
    path = ["interceptor"]
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--":
            break
        default = getattr(command, "default_command", None)
        if isinstance(command, click.Group) and default and token not in command.commands:
            command = command.commands[default]  # a group whose first argument, naming no command, is one's
            path.append(default)
            continue
        if token.startswith("-") and len(token) > 1:
            name = token.split("=", 1)[0]
            option = _option(command, name)
            if option is None and name != "--help":
                return " ".join(path), f"`{' '.join(path)}` has no option {name}"
            if option is not None and not option.is_flag and "=" not in token:
                i += 1  # its value
        elif isinstance(command, click.Group):
            sub = command.commands.get(token)
            if sub is None:
                return " ".join(path), f"`{' '.join(path)}` has no command {token!r}"
            command = sub
            path.append(token)
        i += 1
    return " ".join(path), None


def leaf_commands(group: click.Group, prefix: str = "interceptor") -> set[str]:
    leaves = set()
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        leaves |= leaf_commands(command, path) if isinstance(command, click.Group) else {path}
    return leaves


# -- the generated reference ---------------------------------------------------------------


def test_committed_policy_reference_is_the_generators_output():
    gen = generator()
    expected = gen.render(json.loads(gen.SCHEMA.read_text()), gen.EXAMPLES)
    assert doc("policy-reference.md") == expected, (
        "docs/policy-reference.md is stale: run .venv/bin/python scripts/gen_policy_reference.py")


def test_generator_check_mode_agrees(tmp_path):
    gen = generator()
    stale = tmp_path / "reference.md"
    stale.write_text("# old\n")
    assert gen.main(["--check", "--output", str(stale)]) == 1
    assert gen.main(["--output", str(stale)]) == 0
    assert gen.main(["--check", "--output", str(stale)]) == 0
    assert stale.read_text() == doc("policy-reference.md")


def test_a_schema_field_without_description_is_an_error():
    gen = generator()
    schema = json.loads(gen.SCHEMA.read_text())
    changed = copy.deepcopy(schema)
    changed["$defs"]["mask"]["properties"]["salt"] = {"type": "string"}
    with pytest.raises(gen.ReferenceError, match="mask.salt has no description"):
        gen.render(changed, gen.EXAMPLES)
    removed = copy.deepcopy(schema)
    del removed["$defs"]["approval"]["properties"]["grant_seconds"]
    with pytest.raises(gen.ReferenceError, match="approval.grant_seconds, which the schema no longer has"):
        gen.render(removed, gen.EXAMPLES)


def test_reference_covers_every_schema_definition_and_example():
    text = doc("policy-reference.md")
    schema = json.loads((ROOT / "policy" / "schema.json").read_text())
    sections = set(re.findall(r"^## (\S+)$", text, re.M))
    objects = {name for name, node in schema["$defs"].items() if "properties" in node or "oneOf" in node}
    assert objects <= sections, f"schema definitions without a section: {sorted(objects - sections)}"
    for example in sorted(EXAMPLES.glob("*.yaml")):
        assert example.read_text().rstrip() in text, f"{example.name} is not embedded in the reference"


# -- commands the docs show --------------------------------------------------------------


def test_checker_refuses_made_up_commands_and_options():
    assert check_invocation(["frobnicate"])[1] == "`interceptor` has no command 'frobnicate'"
    assert check_invocation(["status", "--bogus"])[1] == "`interceptor status` has no option --bogus"
    assert check_invocation(["audit", "tail", "-n", "5", "-f"]) == ("interceptor audit tail", None)
    assert check_invocation(["exec", "--agent", "a", "--", "sh", "--weird"]) == ("interceptor exec", None)
    assert invocations("`/etc/interceptor/x.yaml` and `interceptor.yaml`\n") == []
    assert invocations("```sh\nsudo interceptor status  # see interceptor logs\n```\n") == [["status"]]


@pytest.mark.parametrize("name", DOC_FILES)
def test_every_command_in_the_docs_exists(name):
    found = invocations(doc(name))
    assert found, f"{name} shows no interceptor command at all"
    problems = [f"interceptor {' '.join(tokens)}: {problem}"
                for tokens in found for _, problem in [check_invocation(tokens)] if problem]
    assert not problems, "\n".join(problems)


def test_every_cli_command_is_documented_in_the_guide():
    shown = {check_invocation(tokens)[0] for tokens in invocations(doc("guide.md"))}
    missing = leaf_commands(main) - shown
    assert not missing, f"commands the guide never shows: {sorted(missing)}; document them in docs/guide.md"


def test_make_targets_named_in_the_docs_exist_or_are_marked_not_yet():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    assert MAKE.findall(" ".join(c for c, _ in code_by_line("```sh\nsudo make run\n```\n`make x`\n"))) == ["run", "x"]
    problems = []
    for name in DOC_FILES:
        for code, line in code_by_line(doc(name)):
            for target in MAKE.findall(COMMENT.split(code, 1)[0]):
                if target not in targets and not NOT_YET.search(line):
                    problems.append(f"{name}: make {target} is no Makefile target and not marked 'not yet'")
    assert not problems, "\n".join(problems)


# -- policies, identity blocks and settings the docs show ------------------------------------


def cli(*args: str, tmp_path: Path):
    settings = tmp_path / "interceptor.yaml"
    settings.write_text("")
    return CliRunner().invoke(main, ["--config", str(settings), *args])


def example_policies() -> list[Path]:
    return sorted(p for p in EXAMPLES.glob("*.yaml") if not p.name.endswith(".tests.yaml"))


def test_there_are_examples():
    assert len(example_policies()) >= 3, f"expected the worked examples in {EXAMPLES.relative_to(ROOT)}"


@pytest.mark.parametrize("policy", example_policies(), ids=lambda p: p.name)
def test_example_passes_policy_check_and_its_tests(policy, tmp_path):
    checked = cli("policy", "check", str(policy), tmp_path=tmp_path)
    assert checked.exit_code == 0 and "ok (version" in checked.output, checked.output
    tests = policy.with_name(policy.stem + ".tests.yaml")
    assert tests.exists(), f"example {policy.name} has no {tests.name}"
    tested = cli("policy", "test", str(tests), tmp_path=tmp_path)
    assert tested.exit_code == 0 and " 0 failed" in tested.output, tested.output


def test_the_guides_database_policy_passes_check_and_its_tests(tmp_path):
    blocks = yaml_blocks(doc("guide.md"))
    policies = [b for b in blocks if b.startswith("version: 1")]
    cases = [b for b in blocks if re.search(r"^policy: policy\.yaml$", b, re.M)]
    assert len(policies) == 1 and len(cases) == 1, "expected one whole policy and one tests file in the guide"
    (tmp_path / "policy.yaml").write_text(policies[0])
    (tmp_path / "policy.tests.yaml").write_text(cases[0])
    checked = cli("policy", "check", str(tmp_path / "policy.yaml"), tmp_path=tmp_path)
    assert checked.exit_code == 0, checked.output
    tested = cli("policy", "test", str(tmp_path / "policy.tests.yaml"), tmp_path=tmp_path)
    assert tested.exit_code == 0 and " 0 failed" in tested.output, tested.output


def test_identity_blocks_in_the_guide_pass_the_daemons_checks():
    checked = 0
    for block in yaml_blocks(doc("guide.md")):
        data = yaml.safe_load(block)
        for name, spec in (data.get("agents") or {}).items() if isinstance(data, dict) else ():
            if "identity" in spec:
                assert parse_identity_config(name, spec["identity"]).source != "none"
                checked += 1
    assert checked >= 2, "expected the client_credentials and login identity blocks in the guide"


def test_settings_example_in_the_guide_loads(tmp_path):
    blocks = [b for b in yaml_blocks(doc("guide.md")) if re.search(r"^redirect: ", b, re.M)]
    assert len(blocks) == 1, "expected one interceptor.yaml example in the guide"
    path = tmp_path / "interceptor.yaml"
    path.write_text(blocks[0])
    settings = load_settings(path)
    assert settings.redirect == "auto" and settings.policy == Path("/etc/interceptor/policy.yaml")
