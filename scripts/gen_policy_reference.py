#!/usr/bin/env python3
"""Generate docs/policy-reference.md from policy/schema.json, the identity fields the daemon
checks (interceptor.identity.config), the registered protocols (interceptor.protocols) and
the worked examples in policy/examples/.

The schema says what is allowed but rarely why; the descriptions live here, keyed by
`section.field`, or, for what a protocol contributes, in the schema fragment of its module
(`description`). A schema field without a description, or a description here whose field
left the schema, is an error: the reference can never silently drift from the schema.

    python scripts/gen_policy_reference.py           # rewrite docs/policy-reference.md
    python scripts/gen_policy_reference.py --schema  # and policy/schema.json, after a protocol changed
    python scripts/gen_policy_reference.py --check   # exit 1 if either committed file is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from interceptor.identity.config import FIELDS as IDENTITY_FIELDS
from interceptor.identity.config import REQUIRED as IDENTITY_REQUIRED
from interceptor.policy.encodings import CLIENT_ONLY
from interceptor.policy.schema import composed
from interceptor.policy.schema import text as schema_text
from interceptor.policy.sql import SHADOWING_RULE
from interceptor.policy.sql_rules import (
    BOOTSTRAP_RULE, CURSOR_RULE, DANGEROUS_FUNCTIONS, DANGEROUS_RULE, DDL_KINDS, HARMLESS_VOLATILE_FUNCTIONS,
    MASK_FAILSAFE_RULE, OPERATION_KEY, TRANSACTION_RULE, UNPARSED_RULE,
)
from interceptor.policy.sql_session import BOOTSTRAP_RELATIONS, BOOTSTRAP_SETTINGS, SESSION_FUNCTIONS, SESSION_SETTINGS
from interceptor.policy.statement import (
    CATALOG_UNAVAILABLE, CATALOG_UNKNOWN_FUNCTION, CATALOG_UNKNOWN_RELATION, CATALOG_UNKNOWN_TYPE, JSON_ROW_FUNCTIONS,
    UNSAFE_ENCODING,
)
from interceptor.protocols import protocols

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "policy" / "schema.json"
EXAMPLES = ROOT / "policy" / "examples"
OUTPUT = ROOT / "docs" / "policy-reference.md"
ROOT_SECTION = "policy"


class ReferenceError(ValueError):
    """The schema and the descriptions below disagree; the message names the field."""


SECTIONS: dict[str, str] = {
    "policy": "A policy file is one YAML mapping. Unknown keys anywhere are errors, so a misspelt "
              "security setting fails `policy check` instead of being ignored.",
    "resource": "Something agents reach over the network. A connection by an agent to one of its addresses "
                "is diverted to the enforcer and handled by the protocol's handler.",
    "credentials": "Where the enforcer gets the secret it logs in upstream with. The agent never sees it. "
                   "The secret is a YAML/JSON mapping (`user:`, `password:`, ...) or one line `user:password`.",
    "agent": "A set of processes: those started with `interceptor exec --agent NAME` (always), plus the "
             "cgroups and uids listed here.",
    "identity": "The Okta (OIDC) identity the daemon holds for the agent. The schema only fixes `source`; "
                "every other field is checked by `interceptor.identity.config` when the policy is loaded "
                "(by `policy check` too), and a problem names the agent and the field.",
    "rule": "Who may do what. Default deny; among matching rules deny wins, then approve, then allow. Every "
            "decision names its rule in the audit record, so names are unique. A rule is about at most one kind of "
            f"operation, named by its protocol's key ({', '.join(f'`{p.operation_key}`' for p in protocols())}); "
            "with none it is about every operation.",
    "subjects": "Conditions on who acts. Within one field any listed value will do; every given field must "
                "hold. Identity fields never match a flow without an identity.",
    "approval": "Who may release an operation held by an `approve` rule, and what the approval grants.",
    "mask": "Values to hide in results. Mask rules never allow anything; they add masks to what other "
            "rules allow.",
}

DESCRIPTIONS: dict[str, str] = {
    "policy.version": "Format version; always `1`.",
    "policy.resources": "The resources, by name.",
    "policy.agents": "The agents, by name.",
    "policy.rules": "The rules, in any order (order does not change decisions).",
    "resource.protocol": "Which handler judges the traffic: a protocol interceptor has a handler for (see the "
                         "table below). Others are refused when the policy is loaded.",
    "resource.addresses": "`ip:port`, `host:port`, `[ipv6]:port` or `cidr:port`. Hostnames are resolved by the "
                          "daemon and re-resolved every 30 s.",
    "resource.credentials": "The upstream secret; see [credentials](#credentials).",
    "resource.options": "Settings for the protocol's handler; which ones depends on `protocol` (below).",
    "agent.cgroups": "cgroup-v2 paths relative to the cgroup2 mount (e.g. `system.slice/agent.service`); "
                     "processes in them or below are this agent.",
    "agent.uids": "Processes with these uids are this agent. uid 0 is refused: root can remove any enforcement.",
    "agent.identity": "See [identity](#identity). Omitted: no identity (`source: none`).",
    "agent.unprotected": "Connections to destinations that are no resource: `deny` (default) refuses them at "
                         "`connect()`, `allow` lets them pass untouched. DNS (port 53) is always allowed.",
    "identity.source": "How the daemon obtains the agent's token: `client_credentials` (an Okta service app), "
                       "`token_file` (a file another process keeps fresh), `login` (a person signs in with "
                       "`interceptor login`), `none`.",
    "subjects.groups": "Okta groups (the token's groups claim); globs.",
    "subjects.scopes": "Token scopes (`scp`); globs.",
    "subjects.subject": "Token subject (`sub`); globs.",
    "subjects.client_id": "The OAuth client the token was issued to (`cid`); globs.",
    "subjects.exe": "Executable path of the connecting process (`/proc/PID/exe`); globs.",
    "subjects.uid": "uid of the connecting process.",
    "approval.groups": "Okta groups whose members may approve; local root may always decide (recorded as "
                       "break-glass). Nobody approves their own request.",
    "approval.grant": "`one-shot` (default): the approval covers the held operation (or one identical retry). "
                      "`time-boxed`: every identical operation until `grant_seconds` pass.",
    "approval.grant_seconds": "Length of a time-boxed grant (default 3600).",
    "approval.timeout_seconds": "How long the operation is held before it is denied as expired (default 300).",
    "mask.columns": "`schema.table.column` globs whose values are masked wherever they reach a result: "
                    "by name, inside a whole row, computed from, through cursors and RETURNING (see \"What "
                    "masking covers\"). Using a masked column anywhere else (WHERE, JOIN, ORDER BY, writes, "
                    "COPY ... TO) denies the statement.",
    "mask.classifiers": "Mask only the spans these detectors find, in any text column: `card` (payment card "
                        "numbers), `email`, `national_id` (US SSN, UK NINO, Canadian SIN), `iban`, `api_key` "
                        "(well-known token formats and long hex strings).",
    "mask.style": "`redact` (default, `****`), `partial` (cards keep the last four, emails the first letter "
                  "and domain), `hash` (16 hex digits of an HMAC-SHA256 under the host's or fleet's masking key: "
                  "equal values give equal digests, so joins and counts still work; see the guide, Settings), `null`.",
    "rule.name": "Unique; it is written in every decision and audit record the rule makes.",
    "rule.effect": "`allow`, `deny`, `approve` (hold for a person's approval) or `mask`.",
    "rule.reason": "Written to the audit record; where the protocol can carry a message (a PostgreSQL "
                   "error) the agent sees it too.",
    "rule.agents": "Agent names the rule is about; omitted: every agent.",
    "rule.resources": "Resource names the rule is about; omitted: every resource.",
    "rule.subjects": "See [subjects](#subjects).",
    "rule.approval": "See [approval](#approval).",
    "rule.mask": "See [mask](#mask).",
}

IDENTITY: dict[str, str] = {
    "issuer": "The custom authorization server, `https://ORG.okta.com/oauth2/ID` (plain http only to "
              "loopback). Okta's org authorization server (no `/oauth2/...` path) is refused: its access "
              "tokens cannot be validated outside Okta.",
    "audience": "The authorization server's audience, e.g. `api://interceptor`; tokens for another audience "
                "are rejected.",
    "client_id": "The Okta application's client ID.",
    "private_key_file": "PEM private key for `private_key_jwt` client authentication (RSA 2048+ or P-256), "
                        "owned by root, mode 0600.",
    "client_secret_file": "File holding a client secret (`client_secret_basic`), owned by root, mode 0600. "
                          "Give this or `private_key_file`, not both.",
    "key_id": "`kid` header of the client assertions, when Okta holds several keys for the app.",
    "scopes": "Scopes to request. `login` always adds `openid` and `offline_access`.",
    "path": "`token_file`: the file holding the current access token; re-read when it changes.",
    "groups_claim": "Name of the claim holding the groups.",
    "algorithms": "Accepted signature algorithms; only asymmetric ones (RS, PS, ES families) are allowed.",
    "leeway": "Clock skew tolerated on `exp`/`iat`, in seconds (0..300).",
    "introspect": "Also ask the introspection endpoint whether the token was revoked (every 30 s). With "
                  "`token_file` this needs `client_id` and a client credential.",
    "on_invalid": "When the identity expires or is revoked: `deny_next` denies each open flow's next "
                  "operation; `close` cuts the agent's open flows at once. New connections are refused either way.",
}

def _ref_name(node: dict[str, Any]) -> str | None:
    ref = node.get("$ref", "")
    return ref.rsplit("/", 1)[-1] if ref.startswith("#/$defs/") else None


def _plural(phrase: str) -> str:
    """'integer 0..9' -> 'integers 0..9', 'non-empty string' -> 'non-empty strings'."""
    for word in ("string", "integer", "name"):
        if phrase.startswith(word) or phrase.startswith(f"non-empty {word}"):
            return phrase.replace(word, word + "s", 1)
    return phrase


def _yaml(value: Any) -> str:
    """A default as it would be written in the policy file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _code(values: list[Any]) -> str:
    return ", ".join(f"`{json.dumps(v) if not isinstance(v, str) else v}`" for v in values)


def describe_type(node: dict[str, Any], defs: dict[str, Any]) -> str:
    """One schema node as a short phrase for the type column."""
    ref = _ref_name(node)
    if ref == "name":
        return f"name (`{defs['name']['pattern']}`)"
    if ref == "strings":
        return "list of non-empty strings, at least one"
    if ref is not None:
        return f"[{ref}](#{ref})" if is_section(defs[ref]) else describe_type(defs[ref], defs)
    if "const" in node:
        return _code([node["const"]])
    if "enum" in node:
        return "one of " + _code(node["enum"])
    if "oneOf" in node:
        return "one of the forms below"
    kind = node.get("type")
    if isinstance(kind, list):
        return " or ".join(describe_type({**node, "type": one}, defs) for one in kind)
    if kind == "boolean":
        return "`true` or `false`"
    if kind == "array":
        least = {None: "", 1: ", at least one"}.get(node.get("minItems"), f", at least {node.get('minItems')}")
        return f"list of {_plural(describe_type(node['items'], defs))}{least}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"mapping of name to {describe_type(node['additionalProperties'], defs)}"
    if kind == "object" and node.get("properties"):
        fields = ", ".join(f"`{k}`: {describe_type(v, defs)}" for k, v in node["properties"].items())
        return f"mapping of {fields}"
    if kind == "object":
        return "empty mapping" if node.get("additionalProperties") is False else "mapping"
    if kind == "integer":
        low, high = node.get("minimum"), node.get("maximum")
        return "integer" + (f" {low}..{high}" if high is not None else f" >= {low}" if low is not None else "")
    if kind == "string":
        if "pattern" in node:
            return f"string matching `{node['pattern']}`"
        return "non-empty string" if node.get("minLength") else "string"
    raise ReferenceError(f"cannot describe schema node {json.dumps(node)[:80]}")


def is_section(node: dict[str, Any]) -> bool:
    """A definition with fields or forms gets a section; any other is written into the type column."""
    return "properties" in node or "oneOf" in node


def locations(schema: dict[str, Any]) -> dict[str, str]:
    """Where each object definition appears in a policy file, e.g. identity -> agents.NAME.identity."""
    found: dict[str, str] = {}

    def walk(node: dict[str, Any], path: str) -> None:
        ref = _ref_name(node)
        if ref is not None:
            if ref not in found and is_section(schema["$defs"][ref]):
                found[ref] = path
                walk(schema["$defs"][ref], path)
            return
        for key, child in node.get("properties", {}).items():
            walk(child, f"{path}.{key}" if path else key)
        for clause in node.get("allOf", []):
            walk(clause["then"], path)
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}.NAME")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(schema, "")
    return found


def _description(key: str, node: dict[str, Any]) -> str:
    """DESCRIPTIONS[key], else the schema's own `description` (what a protocol's module wrote)."""
    text = DESCRIPTIONS.get(key) or node.get("description")
    if not text:
        raise ReferenceError(f"schema field {key} has no description: add one to DESCRIPTIONS in {Path(__file__).name}"
                             " or to the schema fragment of its protocol")
    return str(text)


def _conditions(node: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    """`allOf: [{if: {properties: {X: {const: V}}}, then: {required: [R]}, else: {not: ...}}]`
    and `then: {properties: {P: schema}}` in words."""
    lines = []
    for clause in node.get("allOf", []):
        (field, test), = clause["if"]["properties"].items()
        for needed in clause["then"].get("required", ()):
            forbidden = " and not allowed otherwise" if "else" in clause else ""
            lines.append(f"`{needed}` is required when `{field}` is `{test['const']}`{forbidden}.")
        for name, child in clause["then"].get("properties", {}).items():
            ref = _ref_name(child)
            target = defs[ref] if ref is not None else child
            told = "" if is_section(target) else f" {target.get('description', '')}".rstrip()
            lines.append(f"`{name}` when `{field}` is `{test['const']}`: {describe_type(child, defs)}.{told}")
    return lines


def field_table(section: str, node: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    required = set(node.get("required", ()))
    rows = ["| field | type | required | meaning |", "| --- | --- | --- | --- |"]
    for name, child in node.get("properties", {}).items():
        rows.append(f"| `{name}` | {_cell(describe_type(child, defs))} | {'yes' if name in required else 'no'} | "
                    f"{_cell(_description(f'{section}.{name}', child))} |")
    return rows


def credentials_forms(node: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    rows = ["| form | fields |", "| --- | --- |"]
    for form in node["oneOf"]:
        props = form["properties"]
        rest = ", ".join(f"`{k}`: {describe_type(v, defs)}" for k, v in props.items() if k != "from")
        rows.append(f"| `from: {props['from']['const']}` | {rest} |")
    return rows


def identity_table() -> list[str]:
    unknown = sorted(set(IDENTITY) - set(IDENTITY_FIELDS))
    if unknown:
        raise ReferenceError(f"IDENTITY describes {', '.join(unknown)}, which interceptor.identity.config "
                             "no longer has")
    rows = ["| field | default | required for | meaning |", "| --- | --- | --- | --- |"]
    for name, spec in IDENTITY_FIELDS.items():
        if name == "source":
            continue
        if name not in IDENTITY:
            raise ReferenceError(f"identity field {name} has no description: add one to IDENTITY in "
                                 f"{Path(__file__).name}")
        shown = "-" if spec.default is None else f"`{_yaml(spec.default)}`"
        needed = ", ".join(f"`{s}`" for s, fields in IDENTITY_REQUIRED.items() if name in fields) or "-"
        rows.append(f"| `{name}` | {shown} | {needed} | {_cell(IDENTITY[name])} |")
    return rows


def _stale_descriptions(schema: dict[str, Any]) -> None:
    known = {f"{ROOT_SECTION}.{k}" for k in schema["properties"]}
    for name, node in schema["$defs"].items():
        known |= {f"{name}.{k}" for k in node.get("properties", {})}
    stale = sorted(set(DESCRIPTIONS) - known)
    if stale:
        raise ReferenceError(f"DESCRIPTIONS has {', '.join(stale)}, which the schema no longer has")


def section(name: str, where: str, node: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    intro = SECTIONS.get(name) or node.get("description")
    if not intro:
        raise ReferenceError(f"schema definition {name} has no introduction: add one to SECTIONS or a description "
                             "to the schema fragment of its protocol")
    out = [f"## {name}", "", f"Where: `{where}`", "", intro, ""]
    if name == "credentials":
        out += credentials_forms(node, defs)
    else:
        out += field_table(name, node, defs)
    conditions = _conditions(node, defs)
    if conditions:
        out += [""] + conditions
    if name == "identity":
        out += ["", "Other fields, as `interceptor.identity.config` checks them:", ""] + identity_table()
        out += ["", "`client_credentials` also needs `private_key_file` (preferred) or `client_secret_file`."]
    if name == "resource":
        out += ["", "| protocol | status |", "| --- | --- |"]
        out += [f"| `{p.name}` | {p.description} |" for p in protocols()]
    if name == OPERATION_KEY:
        out += ["", f"`ddl` stands for {_code(sorted(DDL_KINDS))}.", "",
                "These functions reach outside the query's tables (files, programs, other servers and "
                "sessions, settings) and are denied unless an allow or approve rule names them in "
                f"`functions`: {_code(sorted(DANGEROUS_FUNCTIONS))}."]
    return out + [""]


def judging() -> list[str]:
    """How a SQL statement is judged as the server will run it: names, functions, session
    state and encodings, with the builtin rules that may answer."""
    relations = _code(sorted(f"{schema}.{name}" for schema, name in BOOTSTRAP_RELATIONS))
    return [
        "## How a SQL statement is judged", "",
        "The enforcer judges what the server will run, not its own reading of the text. It reads each "
        "database's catalog through a connection of its own with the resource's credentials (relations of "
        "every kind with their columns, functions with volatility, SECURITY DEFINER and language, the schemas "
        "the role may use, the role's default `search_path`; `interceptor catalog show`), and follows the "
        "session's state as the server applies it. `policy test` files judge with the same catalog type: "
        "a short `{schema.table: [columns]}` form (the whole database: a relation it does not list does not "
        "exist) or a dump from `interceptor catalog show RESOURCE --database DB --json`.", "",
        "### Names", "",
        "An unqualified name resolves as PostgreSQL resolves it (docs, 5.9.3): by the session's `search_path` "
        "as it is now (the startup parameter or `options=-c search_path=...`, then `SET`, `SET LOCAL` until the "
        "transaction ends, `RESET`, `set_config()`, all undone when their transaction rolls back, also by "
        "`COMMIT` of a failed transaction or `ROLLBACK TO SAVEPOINT`), `pg_catalog` first unless listed, "
        "`\"$user\"` for the current role, schemas that do not exist or that the role may not use skipped; "
        "the first schema that holds the name wins. Identifiers fold as the server folds them (ASCII only, "
        "cut at 63 bytes). A prepared statement is judged again when the `search_path` changed since its Parse "
        "(the server re-analyses it then), and after a policy reload or an identity change.", "",
        f"A relation or function the catalog does not hold is refused (`{CATALOG_UNKNOWN_RELATION}`, "
        f"`{CATALOG_UNKNOWN_FUNCTION}`), after the catalog was read again once in case it was made since "
        f"(at most every 2 seconds). While the catalog cannot be read, every statement that names a relation "
        f"or calls a function is refused (`{CATALOG_UNAVAILABLE}`, with why); others run and the session goes "
        f"on. A `search_path` that searches a schema holding functions or operators before `pg_catalog` "
        f"refuses every statement that evaluates an expression (`{SHADOWING_RULE}`): an operator, even `=`, "
        f"could run that schema's code (CVE-2018-1058). SET, RESET, SHOW and transaction control still run, "
        f"so the path can be put right.", "",
        "### Functions", "",
        "Every call is found wherever it stands (select list, FROM, ROWS FROM, WHERE, ORDER BY, GROUP BY, "
        "HAVING, JOIN, CTEs, VALUES, RETURNING, both protocols), and so is the user code the server runs "
        "without the statement naming it: what a relation runs when read (a view's definition and what it "
        "reads, row security policies) or written (column defaults, triggers of that event, CHECK and domain "
        "constraints, generated columns, rules, a partition's or child's triggers), what a cast to a user type "
        "runs (domain checks, casts into it), the function of an operator named `OPERATOR(schema.op)` or "
        "written plainly (`=`, `||`, `@>`, and the `=` that `IN`, `BETWEEN` or `NULLIF` stand for: every "
        "operator of that name in a schema of the search_path other than pg_catalog is a candidate, as "
        "operand types pick among them), and "
        "attribute notation (`t.f` where `f` is no column of `t` is the call `f(t)`), and the comparison "
        "functions of user default btree and hash operator classes and of casts out of a type (for the "
        "types of a relation's columns when it is read; for a built-in type, on every statement, since "
        "any value may be of it), and a range type's subtype class. The reason says which "
        "way a function is reached (`run when sales.audited is read`, `run by INSERT on sales.ledger`, "
        f"`run by a cast to sales.checked`). A type the catalog does not hold is refused "
        f"(`{CATALOG_UNKNOWN_TYPE}`). An unqualified call may resolve to a function of that "
        "name in any schema of the path (argument types choose), so every such candidate is judged. A rule "
        "that names the function in `sql.functions` (`name` or `schema.name` globs) decides it. Otherwise: "
        f"functions on the dangerous list are denied (`{DANGEROUS_RULE}`); immutable and stable functions "
        "of `pg_catalog` are allowed; volatile ones are denied except "
        f"{_code(sorted(HARMLESS_VOLATILE_FUNCTIONS))}; user-defined (any other schema), SECURITY DEFINER "
        "and unknown functions are denied; the reason names the function and how to allow it.", "",
        "### What every client does first", "",
        f"Allowed by default (`{BOOTSTRAP_RULE}`), like transaction control (`{TRANSACTION_RULE}`); a deny "
        f"rule still takes any of it away: `SHOW` of {_code(sorted(BOOTSTRAP_SETTINGS))}; `SELECT` without "
        f"FROM of {_code(sorted(SESSION_FUNCTIONS))} (`current_setting` with one of those settings, as a "
        "literal) and of `current_user`, `session_user`, `current_role`, `user`, `current_catalog`; reading "
        f"{relations}, which drivers read to learn types; `SET` (also `SET LOCAL`, and `set_config` with literals of search_path or client_encoding) of the settings "
        f"a session may choose at startup ({_code(sorted(SESSION_SETTINGS))}); `RESET`, `DISCARD` and "
        "`DEALLOCATE`, which pools and drivers send. `SHOW ALL`, other settings and `SET` of anything else need "
        "a rule naming kind `show` or `set`.", "",
        "### Encodings", "",
        "Statements are decoded in the client encoding the server will use for them. Client-only encodings "
        "can hide a quote or a backslash inside a multibyte character, so the enforcer and the server could "
        f"split the same bytes into different statements: {_code(sorted(CLIENT_ONLY))} (in any spelling the "
        "server accepts) are refused at startup (`client_encoding`, `options`, a role's or database's default) "
        f"and in every way of switching to them (`SET client_encoding`, `SET NAMES`, `set_config`, `RESET` to "
        f"such a default: `{UNSAFE_ENCODING}`). A statement the enforcer cannot read is refused "
        f"(`{UNPARSED_RULE}`), never passed on.", "",
        "### Names the server holds", "",
        "Prepared statements and portals, named and unnamed, follow the server: a Parse, Bind or Close "
        "counts once the server has taken it (a failed or skipped one is undone; `DEALLOCATE` and `DISCARD "
        "ALL` forget), and a Bind or Execute of a name the enforcer did not judge is refused (`unknown-statement`, "
        "`unknown-portal`): the server may hold something else under it (a SQL `PREPARE`, a `DECLARE`d cursor).",
        "",
        "### What masking covers", "",
        "A value is masked by where it comes from, checked twice. The server's word: the RowDescription of "
        "every result names the table and column each value comes straight from, and its type; a masked "
        "column is masked in its rule's style, and a value of a relation's row type is that relation's "
        "composite, masked field by field, even where the analysis missed it. The analysis: a whole row "
        "(`select c from t c`) is masked field by field as the composite (text or binary) and, passed alone to "
        f"{_code(sorted(JSON_ROW_FUNCTIONS))} of `pg_catalog`, as JSON (the member of each masked column "
        "replaced, every other byte kept); a whole row with a masked column in any other shape (`c::text`, "
        f"`concat(c)`, a subquery's row, `array_agg(c)`) is refused (`{MASK_FAILSAFE_RULE}`). A result computed "
        "from a masked column (`upper(email)`, `length(card)`, `card::int`, a `CASE`, an aggregate) is refused "
        "before it runs: what the computation does with the value (an error for some values, its time) could "
        "tell it. So is a masked column that chooses rows or their order or count anywhere: WHERE, JOIN, "
        "ORDER BY (also by position or output name), GROUP BY, DISTINCT, UNION, INTERSECT, EXCEPT, a window's "
        "PARTITION BY or ORDER BY, an aggregate's ORDER BY or FILTER, the arguments of a volatile or "
        "set-returning call, writes, `COPY ... TO`, and a view whose definition reads it (RowDescription names "
        "the view's columns, and which one carries it is not followed); and, while mask rules are in force, "
        "the planner's statistics (`pg_stats` and the like hold sampled values of every column). Where only "
        "the analysis ties a value to "
        "a masked column, it becomes one constant for every row (`****`, or NULL for a non-text type). "
        "`DECLARE ... CURSOR FOR q` is judged as `q`, and "
        f"`FETCH`/`MOVE` return rows masked as `q`'s result (`{CURSOR_RULE}`); a cursor the enforcer did not "
        "judge, or closed, or ended with its transaction, is refused (`unknown-cursor`); a cursor counts once "
        "the server confirms its DECLARE. RETURNING is a result like any other.", "",
        "An error or notice raised while a statement reads masked values may quote one: its text is replaced "
        "by a message naming the rules, its SQLSTATE and position kept. Every other error and notice has what the classifiers find replaced (setting "
        "`masking: {scan_errors: true}`, the default). When the masker cannot tell, the result is withheld "
        "and the session closed, never shown.", "",
    ]


def example(path: Path) -> list[str]:
    text = path.read_text()
    intro = [line[1:].strip() for line in text.splitlines() if line.startswith("#")]
    tests = path.with_name(path.stem + ".tests.yaml")
    if not tests.exists():
        raise ReferenceError(f"example {path.name} has no {tests.name}: every example is tested")
    rel, rel_tests = path.relative_to(ROOT), tests.relative_to(ROOT)
    return [f"### {path.stem}", "", " ".join(intro), "", "```sh",
            f"interceptor policy check {rel}", f"interceptor policy test {rel_tests}", "```", "",
            f"`{rel}`:", "", "```yaml", text.rstrip(), "```", "", f"`{rel_tests}`:", "", "```yaml",
            tests.read_text().rstrip(), "```", ""]


def render(schema: dict[str, Any], examples: Path) -> str:
    """The whole reference as Markdown; ReferenceError when schema and descriptions disagree."""
    _stale_descriptions(schema)
    defs = schema["$defs"]
    where = locations(schema)
    out = ["# Policy reference", "",
           "<!-- Generated by scripts/gen_policy_reference.py from policy/schema.json; do not edit by hand. -->",
           "", "Check a file with `interceptor policy check FILE` and run its table-driven tests with "
           "`interceptor policy test FILE.tests.yaml` (both take `--json`; exit status 0 or 1). Errors read "
           "`file:line:col: what is wrong`. The language, its SQL semantics and the test-file format are "
           "explained in [policy/README.md](../policy/README.md); this page lists every field.", "",
           "Globs are shell-style (`*`, `?`, `[...]`), case-sensitive.", "",
           "## policy", "", "Where: the top level of the file", "", SECTIONS[ROOT_SECTION], ""]
    out += field_table(ROOT_SECTION, schema, defs) + [""]
    out += judging()
    for name in where:
        out += section(name, where[name], defs[name], defs)
    out += ["## Examples", "", "Each example below is checked and tested in CI (`tests/unit/test_docs.py`).", ""]
    for path in sorted(p for p in examples.glob("*.yaml") if not p.name.endswith(".tests.yaml")):
        out += example(path)
    return "\n".join(out).rstrip() + "\n"


def _stale(path: Path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    print(f"{path} is stale: run python scripts/gen_policy_reference.py --schema", file=sys.stderr)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the committed reference or policy/schema.json is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--schema", action="store_true",
                        help="also rewrite policy/schema.json, the schema the registered protocols compose")
    args = parser.parse_args(argv)
    try:
        text = render(composed(), EXAMPLES)
    except ReferenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.check:
        stale = [_stale(args.output, text), _stale(SCHEMA, schema_text())]
        return 1 if any(stale) else 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    if args.schema:
        SCHEMA.write_text(schema_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
