"""Statements about the session rather than data: SET, RESET, SHOW, DISCARD, DEALLOCATE,
transaction control and `SELECT set_config(...)`, read word by word into what they change
(settings.Effect), and the statements every client runs first (the bootstrap lists).

Values are read as the server reads them (docs: SET, RESET, DISCARD, DEALLOCATE, BEGIN,
COMMIT, ROLLBACK, SAVEPOINT, RELEASE SAVEPOINT, ROLLBACK TO SAVEPOINT; 9.27.1 "Configuration
Settings Functions"): an unquoted name is folded, a quoted one or a string is kept; a list
setting marked GUC_LIST_QUOTE (search_path) quotes every element, so `SET search_path TO
'a, b'` names one schema "a, b" while `set_config('search_path', 'a, b', false)` names two.
A value of a followed setting (search_path, client_encoding, role) that cannot be read so
is an error: the statement is denied rather than followed wrongly.
"""

from __future__ import annotations

import re

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import SqlglotError
from sqlglot.tokenizer_core import Token, TokenType

from interceptor.policy.encodings import client_only
from interceptor.policy.settings import FOLLOWED, Effect
from interceptor.policy.sql_functions import token_name
from interceptor.policy.statement import UNSAFE_ENCODING, Action, Call, Statement, Unsupported

DIALECT = Postgres()

# SHOW of these is allowed by default (builtin-session-bootstrap): what drivers and ORMs
# read when they connect (docs, 20 "Server Configuration"; the SQL names of SHOW TIME ZONE,
# SHOW TRANSACTION ISOLATION LEVEL and SHOW SESSION AUTHORIZATION are timezone,
# transaction_isolation and session_authorization).
BOOTSTRAP_SETTINGS = frozenset({
    "application_name", "bytea_output", "client_encoding", "datestyle", "default_text_search_config",
    "default_transaction_isolation", "default_transaction_read_only", "escape_string_warning",
    "extra_float_digits", "idle_in_transaction_session_timeout", "in_hot_standby", "integer_datetimes",
    "intervalstyle", "is_superuser", "lc_messages", "lc_monetary", "lc_numeric", "lc_time", "lock_timeout",
    "max_identifier_length", "row_security", "search_path", "server_encoding", "server_version",
    "server_version_num", "session_authorization", "standard_conforming_strings", "statement_timeout",
    "timezone", "transaction_isolation", "transaction_read_only", "xmlbinary", "xmloption",
})
# Settings a session may set on its own (startup parameter, options=-c, SET, set_config):
# SET and RESET of these, like RESET of anything, DISCARD and DEALLOCATE, are allowed by
# default (builtin-session-bootstrap): they change how the session talks, not what it may read.
SESSION_SETTINGS = frozenset({
    "application_name", "client_encoding", "datestyle", "timezone", "intervalstyle", "extra_float_digits",
    "search_path", "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout",
})
# pg_catalog functions a SELECT without FROM may call and still be bootstrap (current_setting
# only with a literal name from BOOTSTRAP_SETTINGS). CURRENT_USER, SESSION_USER, CURRENT_ROLE,
# USER, CURRENT_CATALOG and CURRENT_SCHEMA without parentheses are SQL syntax, no call.
SESSION_FUNCTIONS = frozenset({
    "version", "current_schema", "current_schemas", "current_database", "pg_backend_pid", "current_setting",
})
# Catalog relations drivers read to learn types (psycopg's TypeInfo, asyncpg's type
# introspection, SQLAlchemy's dialects): reading them is allowed by default.
BOOTSTRAP_RELATIONS = frozenset({
    ("pg_catalog", "pg_type"), ("pg_catalog", "pg_namespace"), ("pg_catalog", "pg_range"),
    ("pg_catalog", "pg_enum"), ("pg_catalog", "pg_attribute"), ("pg_catalog", "pg_class"),
})

_ROLE_SETTINGS = frozenset({"role", "session_authorization"})  # SET of these is kind set_role
_SETTING_ALIASES = {("TIME", "ZONE"): "timezone", ("TRANSACTION", "ISOLATION", "LEVEL"): "transaction_isolation",
                    ("SESSION", "AUTHORIZATION"): "session_authorization"}
_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_$]*")
_STRINGS = (TokenType.STRING, TokenType.HEREDOC_STRING)
_LITERALS = frozenset({TokenType.NUMBER, TokenType.BYTE_STRING, TokenType.NATIONAL_STRING, TokenType.BIT_STRING,
                       TokenType.HEX_STRING, TokenType.UNICODE_STRING, TokenType.RAW_STRING})
_WORD = re.compile(r"[^\W\d][\w$]*")


# -- transaction control -------------------------------------------------------------------


def transaction(source: str, chunk: list[Token]) -> Statement:
    """BEGIN / START TRANSACTION [modes], COMMIT / END, ROLLBACK / ABORT [AND [NO] CHAIN],
    SAVEPOINT n, RELEASE [SAVEPOINT] n, ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] n; checked
    word by word, since sqlglot parses some of it as nonsense (SAVEPOINT s becomes an alias)."""
    words = [token.text.upper() for token in chunk]
    first, named = words[0], chunk[-1].token_type in (TokenType.VAR, TokenType.IDENTIFIER)
    name = token_name(chunk[-1])
    filler = {"WORK", "TRANSACTION"}
    effects: tuple[Effect, ...] | None = None
    if first in {"BEGIN", "START"} and _transaction_modes(words[1:]) and (
            first == "BEGIN" or words[1:2] == ["TRANSACTION"]):
        effects = (Effect("begin"),)
    elif first in {"COMMIT", "END", "ROLLBACK", "ABORT"} and "TO" not in words:
        rest = [w for w in words[1:] if w not in filler]
        kind = "commit" if first in {"COMMIT", "END"} else "rollback"
        if rest in ([], ["AND", "NO", "CHAIN"]):
            effects = (Effect(kind),)
        elif rest == ["AND", "CHAIN"]:
            effects = (Effect(kind), Effect("begin"))
    elif first == "SAVEPOINT" and len(chunk) == 2 and named:
        effects = (Effect("savepoint", name),)
    elif first == "RELEASE" and named and words[1:-1] in ([], ["SAVEPOINT"]):
        effects = (Effect("release", name),)
    elif first == "ROLLBACK" and named and "TO" in words:
        at = words.index("TO")
        if all(w in filler for w in words[1:at]) and words[at + 1:-1] in ([], ["SAVEPOINT"]):
            effects = (Effect("rollback_to", name),)
    if effects is None:
        return Statement(source, "unknown", error=f"unsupported transaction statement ({' '.join(words[:3])} ...)")
    return Statement(source, "transaction", effects=effects)


def _transaction_modes(words: list[str]) -> bool:
    allowed = {"WORK", "TRANSACTION", "ISOLATION", "LEVEL", "SERIALIZABLE", "REPEATABLE", "READ", "COMMITTED",
               "UNCOMMITTED", "WRITE", "ONLY", "NOT", "DEFERRABLE", ","}
    return all(w in allowed for w in words)


# -- SET -----------------------------------------------------------------------------------


def set_statement(source: str, chunk: list[Token]) -> Statement:
    """SET [SESSION | LOCAL] name TO | = value [, ...] | DEFAULT, and the special forms
    (TIME ZONE, NAMES, SCHEMA, ROLE, SESSION AUTHORIZATION, TRANSACTION, ...). ROLE, SESSION
    AUTHORIZATION and the settings behind them are kind `set_role` (opaque: only a rule
    naming that kind decides); the rest is kind `set`."""
    words = [token.text.upper() for token in chunk]
    at, local = 1, False
    if words[1:2] == ["LOCAL"] or (words[1:2] == ["SESSION"] and words[2:3] not in (["AUTHORIZATION"],
                                                                                     ["CHARACTERISTICS"])):
        at, local = 2, words[1] == "LOCAL"
    head = words[at:at + 2]
    if head[:1] == ["ROLE"] and head[1:] not in (["TO"], ["="]):
        (value,) = _values(chunk[at + 1:], "role")
        return Statement(source, "set_role", opaque=True, effects=(Effect("set", "role", _role(value), local),))
    if head == ["SESSION", "AUTHORIZATION"]:
        return Statement(source, "set_role", opaque=True)
    if head[:1] in (["TRANSACTION"], ["CONSTRAINTS"], ["CATALOG"]) or head == ["SESSION", "CHARACTERISTICS"]:
        return Statement(source, "set", (Action("set"),))
    if head == ["TIME", "ZONE"]:
        return _set(source, "timezone", chunk[at + 2:], local)
    if head[:1] == ["NAMES"]:
        return _set(source, "client_encoding", chunk[at + 1:], local)
    if head[:1] == ["SCHEMA"]:
        return _set(source, "search_path", chunk[at + 1:], local)
    if head == ["XML", "OPTION"]:
        return _set(source, "xmloption", chunk[at + 2:], local)
    name, rest = _setting_name(chunk[at:])
    if rest[:2] and [t.text.upper() for t in rest[:2]] == ["FROM", "CURRENT"]:
        if name in FOLLOWED:
            raise Unsupported(f"SET {name} FROM CURRENT is not followed")
        return Statement(source, "set", (Action("set"),))
    if not rest or rest[0].text.upper() not in ("TO", "="):
        raise Unsupported("SET without TO or =")
    statement = _set(source, name, rest[1:], local)
    if name in _ROLE_SETTINGS:
        effects = tuple(Effect("set", "role", _role(e.value), local) for e in statement.effects if name == "role")
        return Statement(source, "set_role", opaque=True, effects=effects)
    return statement


def _role(value: str | None) -> str | None:
    """SET ROLE NONE (or 'none'): back to the session user, as RESET ROLE."""
    return None if value == "none" else value


def _set(source: str, name: str, tokens: list[Token], local: bool) -> Statement:
    if len(tokens) == 1 and tokens[0].token_type == TokenType.DEFAULT:
        value = None
    elif name == "search_path":
        value = search_path_text(_values(tokens, name))
    else:
        value = ", ".join(_values(tokens, name))
    return Statement(source, "set", (Action("set"),), effects=(Effect("set", name, value, local),),
                     bootstrap=name in SESSION_SETTINGS)


def _setting_name(tokens: list[Token]) -> tuple[str, list[Token]]:
    """A setting's name (`name` or `prefix.name`, lower case) and the tokens after it."""
    if not tokens:
        raise Unsupported("SET without a setting name")
    parts, at = [tokens[0].text], 1
    while at + 1 < len(tokens) and tokens[at].token_type == TokenType.DOT:
        parts.append(tokens[at + 1].text)
        at += 2
    return ".".join(parts).lower(), tokens[at:]


def _values(tokens: list[Token], name: str) -> list[str]:
    """The comma-separated values of a SET, each as the server reads it (one for a followed
    setting other than search_path)."""
    values: list[str] = []
    for item in _split_commas(tokens):
        words = [t.text for t in item]
        if len(item) == 1 and "\\" not in item[0].text and item[0].token_type in _STRINGS:
            values.append(item[0].text)
        elif len(item) == 1 and (item[0].token_type == TokenType.IDENTIFIER
                                 or item[0].token_type not in _LITERALS and _WORD.fullmatch(item[0].text)):
            values.append(token_name(item[0]))
        elif name not in FOLLOWED and item:
            values.append("".join(words) if item[0].token_type in (TokenType.DASH, TokenType.PLUS, TokenType.NUMBER)
                          else " ".join(words).lower())
        else:
            raise Unsupported(f"cannot read the value of {name}")
    if name in FOLLOWED and name != "search_path" and len(values) != 1:
        raise Unsupported(f"SET {name} takes one value")
    return values


def _split_commas(tokens: list[Token]) -> list[list[Token]]:
    items: list[list[Token]] = [[]]
    for token in tokens:
        if token.token_type == TokenType.COMMA:
            items.append([])
        else:
            items[-1].append(token)
    return items


def search_path_text(names: list[str]) -> str:
    """The text of a search_path naming these schemas, as SHOW prints it (each name quoted
    unless it is a plain lower-case word; catalog.parse_search_path reads it back)."""
    return ", ".join(n if _PLAIN_NAME.fullmatch(n) else '"' + n.replace('"', '""') + '"' for n in names)


# -- RESET, SHOW, DISCARD, DEALLOCATE ------------------------------------------------------


def reset(source: str, chunk: list[Token]) -> Statement:
    """RESET name | ALL | ROLE | SESSION AUTHORIZATION | TIME ZONE | ...: kind `reset`, a
    bootstrap statement (it can only go back to what the session started with)."""
    words = [t.text.upper() for t in _tail(chunk)]
    if words == ["ALL"]:
        effects = (Effect("reset_all"),)
    elif words == ["SESSION", "AUTHORIZATION"]:
        effects = (Effect("reset", "role"),)
    else:
        effects = (Effect("reset", _SETTING_ALIASES.get(tuple(words)) or _setting_name(_tail(chunk))[0]),)
    return Statement(source, "reset", effects=effects, bootstrap=True)


def show(source: str, chunk: list[Token]) -> Statement:
    """SHOW name: a bootstrap statement for BOOTSTRAP_SETTINGS, else kind `show` (opaque)."""
    tail = _tail(chunk)
    words = tuple(t.text.upper() for t in tail)
    name = _SETTING_ALIASES.get(words) or (_setting_name(tail)[0] if tail else "")
    if name in BOOTSTRAP_SETTINGS:
        return Statement(source, "show", bootstrap=True)
    return Statement(source, "show", opaque=True)


def discard(source: str, chunk: list[Token]) -> Statement:
    """DISCARD ALL (also RESET ALL and DEALLOCATE ALL) | PLANS | SEQUENCES | TEMP: kind
    `discard`, a bootstrap statement (what connection pools send between clients)."""
    words = [t.text.upper() for t in chunk[1:]]
    return Statement(source, "discard", effects=(Effect("discard_all"),) if words == ["ALL"] else (), bootstrap=True)


def deallocate(source: str, chunk: list[Token]) -> Statement:
    """DEALLOCATE [PREPARE] name | ALL: kind `deallocate`, a bootstrap statement."""
    tail = chunk[1:]
    if tail and tail[0].text.upper() == "PREPARE":
        tail = tail[1:]
    if len(tail) != 1:
        raise Unsupported("DEALLOCATE takes one name or ALL")
    if tail[0].token_type == TokenType.ALL:
        effect = Effect("deallocate_all")
    else:
        effect = Effect("deallocate", token_name(tail[0]))
    return Statement(source, "deallocate", effects=(effect,), bootstrap=True)


_FETCH_DIRECTIONS = frozenset({"NEXT", "PRIOR", "FIRST", "LAST", "ABSOLUTE", "RELATIVE", "ALL", "FORWARD", "BACKWARD"})


def fetch(source: str, chunk: list[Token]) -> Statement:
    """FETCH | MOVE [direction] [FROM | IN] cursor (docs, FETCH): kind `fetch`, naming the
    cursor; what it returns is the cursor's query, which the session judged at its DECLARE."""
    tail = _tail(chunk)
    if not tail or tail[-1].token_type not in (TokenType.VAR, TokenType.IDENTIFIER):
        raise Unsupported(f"{chunk[0].text.upper()} without a cursor name")
    direction = tail[:-1]
    if direction and direction[-1].text.upper() in ("FROM", "IN"):
        direction = direction[:-1]
    words = [t.text.upper() for t in direction if t.token_type != TokenType.DASH]
    if len(words) > 2 or any(w not in _FETCH_DIRECTIONS and not w.isdigit() for w in words):
        raise Unsupported(f"{chunk[0].text.upper()} direction {' '.join(words)!r} is not one the analyser knows")
    return Statement(source, "fetch", cursor=token_name(tail[-1]))


def close(source: str, chunk: list[Token]) -> Statement:
    """CLOSE cursor | ALL: kind `close` (cursor None for ALL)."""
    tail = chunk[1:]
    if len(tail) != 1:
        raise Unsupported("CLOSE takes one cursor name or ALL")
    return Statement(source, "close", cursor=None if tail[0].token_type == TokenType.ALL else token_name(tail[0]))


def _tail(chunk: list[Token]) -> list[Token]:
    """The tokens after the first word; sqlglot hands the rest of SHOW and RESET over as one
    raw string, which is tokenized again."""
    if len(chunk) == 2 and chunk[1].token_type == TokenType.STRING and chunk[0].token_type in (
            TokenType.SHOW, TokenType.COMMAND, TokenType.FETCH):
        try:
            return DIALECT.tokenize(chunk[1].text)
        except SqlglotError as exc:
            raise Unsupported(f"cannot tokenize {chunk[1].text[:60]!r}") from exc
    return chunk[1:]


# -- set_config and bootstrap SELECTs -------------------------------------------------------


def set_config_effects(tree: exp.Expr, calls: list[tuple[Call, exp.Expr | None]]) -> tuple[Effect, ...]:
    """`SELECT set_config('name', 'value', is_local)` alone, with three literals: the setting
    it changes. A set_config of a followed setting anywhere else, or with any argument not a
    literal, cannot be followed: Unsupported."""
    effects: list[Effect] = []
    for call, node in calls:
        if call.name != "set_config" or call.schema not in (None, "pg_catalog"):
            continue
        arguments = list(node.expressions) if isinstance(node, exp.Anonymous) else []
        name = _literal(arguments[0]) if arguments else None
        if name is not None and name.lower() not in FOLLOWED:
            continue
        value, is_local = (_literal(arguments[1]), _boolean(arguments[2])) if len(arguments) == 3 else (None, None)
        if name is None or value is None or is_local is None or not _alone(tree, node):
            raise Unsupported("set_config() of a followed setting (search_path, client_encoding, role) must be "
                              "the whole statement, SELECT set_config('name', 'value', true|false), with literals")
        setting = name.lower()
        effects.append(Effect("set", setting, None if setting == "role" and value == "none" else value, is_local))
    return tuple(effects)


def _literal(node: exp.Expr) -> str | None:
    if isinstance(node, exp.Literal) and node.is_string and "\\" not in node.this:
        return str(node.this)
    return None


def _boolean(node: exp.Expr) -> bool | None:
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    text = _literal(node)
    words = {"t": True, "true": True, "on": True, "yes": True, "1": True,
             "f": False, "false": False, "off": False, "no": False, "0": False}
    return words.get(text.strip().lower()) if text is not None else None


def _alone(tree: exp.Expr, node: exp.Expr | None) -> bool:
    """Is the statement exactly SELECT node [AS alias]?"""
    if not isinstance(tree, exp.Select) or len(tree.expressions) != 1 or node is None:
        return False
    projection = tree.expressions[0]
    projection = projection.this if isinstance(projection, exp.Alias) else projection
    if isinstance(projection, exp.Dot):
        projection = projection.expression
    return projection is node and not any(tree.args.get(k) for k in tree.args if k != "expressions")


def session_select(tree: exp.Expr, calls: list[tuple[Call, exp.Expr | None]]) -> bool:
    """A SELECT without FROM that calls nothing but SESSION_FUNCTIONS (`SELECT 1`, `select
    pg_catalog.version()`, `SELECT current_setting('server_version_num')`)."""
    if not isinstance(tree, exp.Select) or tree.find(exp.Table) is not None:
        return False
    if any(tree.args.get(k) for k in tree.args if k not in ("expressions", "kind")):
        return False
    for call, node in calls:
        if call.name not in SESSION_FUNCTIONS or call.schema not in (None, "pg_catalog"):
            return False
        if call.name == "current_setting":
            arguments = list(node.expressions) if isinstance(node, exp.Anonymous) else []
            setting = _literal(arguments[0]) if arguments else None
            if setting is None or setting.lower() not in BOOTSTRAP_SETTINGS:
                return False
    return True


# -- encodings -----------------------------------------------------------------------------


def refuse_unsafe_encoding(statement: Statement, defaults: dict[str, str | None]) -> Statement:
    """The statement, or an error under builtin-unsafe-encoding when it switches
    client_encoding (SET, SET NAMES, set_config, or RESET to the default) to a client-only
    encoding (interceptor.policy.encodings.client_only)."""
    for effect in statement.effects:
        if effect.kind in ("set", "reset") and effect.name == "client_encoding":
            value = effect.value if effect.kind == "set" and effect.value is not None else defaults.get(effect.name)
        elif effect.kind in ("reset_all", "discard_all"):
            value = defaults.get("client_encoding")
        else:
            continue
        if value is not None and client_only(value):
            return Statement(statement.text, statement.kind, error=(
                f"client encoding {value!r} is refused: its multibyte characters can contain the bytes of a quote "
                "or backslash, so the enforcer and the server could read the statements that follow differently; "
                "use UTF8"), rule=UNSAFE_ENCODING)
    return statement
