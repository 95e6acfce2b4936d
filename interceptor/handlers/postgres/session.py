"""The PostgreSQL proxy as a sans-IO state machine: bytes in, commands out.

`ProxySession` sits between an agent and the upstream server once both are logged in.
Client messages are judged (a Query or a Parse carries SQL); server messages are
walked by header only, except the few that end a statement or describe its columns.

A denied statement is not answered by the enforcer: the server is sent a sentinel that
fails at parse time (a syntax error carrying this session's nonce) in place of the
statement, and that error is rewritten into the 42501 naming the rule. So the server
itself puts the transaction into the failed state, skips pipelined messages to the next
Sync and sends exactly one ReadyForQuery with the true status, as it would for any
error, and a later COMMIT rolls back.
"""

from __future__ import annotations

import fnmatch
import re
import secrets
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from interceptor.audit.event import SharedSummary
from interceptor.decision import Decision, MaskSpec, Verdict
from interceptor.handlers.postgres import codec
from interceptor.handlers.postgres.codec import (
    MAX_MESSAGE,
    Column,
    ProtocolViolation,
)
from interceptor.textcache import short_text_cache

CLIENT, SERVER = "client", "server"
PASSED_PARAMETERS = frozenset({
    "application_name", "client_encoding", "datestyle", "timezone", "intervalstyle", "extra_float_digits",
    "search_path", "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout",
})
_STREAM_CLIENT = frozenset(b"d")  # CopyData from the client is forwarded as it arrives
_STREAM_SERVER = frozenset(b"d")
_STREAM_SERVER_ROWS = frozenset(b"dD")
_ASYNC = frozenset(b"NSA")  # notices, parameter status, notifications: any time, no state
_FRAME = struct.Struct("!BI")  # message type as a number, length

RowMask = Callable[[memoryview], bytes]
MaskFactory = Callable[[tuple[MaskSpec, ...], tuple[Column, ...], tuple[str | None, ...]], RowMask | None]


def _derived_from_masked(decision: Decision) -> dict[int, str]:
    """Result positions the policy's lineage found derived from a masked column (expressions
    carry no table OID), with that column. Positions of every statement of the query are
    taken together: masking one column too many is safe, one too few is a leak."""
    derived: dict[int, str] = {}
    for detail in decision.details:
        for output in detail.get("masked_outputs", ()):
            derived.setdefault(int(output["position"]), str(output["columns"][0]))
    return derived


class Refused(Exception):
    """Startup refused: send FATAL `code` `message` to the client and close."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Startup:
    user: str
    database: str
    params: dict[str, str]  # what is passed upstream besides user and database
    minor: int  # protocol minor version spoken with the client (0 or 2)
    greeting: bytes  # NegotiateProtocolVersion when the client asked for more than 3.2


def accept_startup(packet: codec.StartupPacket) -> Startup:
    """Check a StartupMessage; only harmless session settings reach the server."""
    params = dict(packet.params)
    user = params.pop("user", "")
    if not user:
        raise Refused("28000", "no PostgreSQL user name specified in startup packet")
    database = params.pop("database", "") or user
    if "replication" in params and params["replication"].lower() not in ("0", "off", "false", "no"):
        raise Refused("42501", "replication connections are not allowed through the enforcer")
    params.pop("replication", None)
    unrecognized = sorted(name for name in params if name.startswith("_pq_."))
    refused = sorted(n for n in params if n.lower() not in PASSED_PARAMETERS and not n.startswith("_pq_."))
    if refused:
        raise Refused("42501", f"startup parameter(s) {', '.join(refused)} are not allowed through the enforcer "
                               f"(allowed: {', '.join(sorted(PASSED_PARAMETERS))})")
    minor = packet.version & 0xFFFF
    greeting = b""
    if minor > 2 or unrecognized:
        greeting = codec.negotiate_protocol_version(min(minor, 2), unrecognized)
    passed = {k: v for k, v in params.items() if not k.startswith("_pq_.")}
    return Startup(user, database, passed, 2 if minor >= 2 else 0, greeting)


def database_allowed(database: str, patterns: tuple[str, ...] | None, credentials_database: str | None) -> bool:
    """Patterns from the resource when it lists databases; else only the credentials' own
    database when they name one; else any (the server's grants decide)."""
    if patterns:
        return any(fnmatch.fnmatchcase(database, p) for p in patterns)
    return credentials_database is None or database == credentials_database


_LITERAL = re.compile(r"""(?:[eE]?'(?:[^']|'')*')|(\$[A-Za-z_]*\$)(?:.|\n)*?\1|(?<![\w$.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?""")


@short_text_cache(maxsize=4096)
def redact_literals(sql: str) -> str:
    """The statement with string, dollar-quoted and numeric literals replaced by '?'
    (cached: a prepared statement's text comes back with every execution)."""
    return _LITERAL.sub("?", sql)


# ---- commands the handler carries out ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    to: str
    data: list[bytes | memoryview]


@dataclass(frozen=True, slots=True)
class Audit:
    decision: Decision
    operation: dict[str, object]
    outcome: dict[str, object]


@dataclass(frozen=True, slots=True)
class Hold:
    """Ask for approval of `text`; answer with `ProxySession.approval(...)`."""

    text: str
    decision: Decision


@dataclass(frozen=True, slots=True)
class ResolveTables:
    """Look up these table OIDs' column names; answer with `ProxySession.learn_tables`."""

    oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Close:
    reason: str


Command = Send | Audit | Hold | ResolveTables | Close


# ---- per-statement bookkeeping ------------------------------------------------------


@dataclass(slots=True)
class Statement:
    """One judged statement (a Query, or an Execute of a parsed statement)."""

    text: str
    decision: Decision
    via: str
    started: float
    parameters: int = 0
    rows: int | None = None
    command: str | None = None
    error: str | None = None
    approval: dict[str, object] | None = None
    prepared: Prepared | None = None  # the parsed statement an Execute ran

    @property
    def denied(self) -> bool:
        return self.decision.verdict is Verdict.DENY


@dataclass(slots=True)
class Prepared:
    text: str
    decision: Decision
    approval: dict[str, object] | None = None
    columns: tuple[Column, ...] | None = None
    executions: int = 0
    operation: SharedSummary | None = None  # what every execution's audit record says it ran

    def one_shot_spent(self) -> bool:
        """A one-shot approval at Parse covers one execution, not every later Execute."""
        spec = self.decision.approval
        return self.approval is not None and spec is not None and spec.grant == "one-shot" and self.executions > 0


@dataclass(slots=True)
class Portal:
    prepared: Prepared | None
    parameters: int
    formats: tuple[int, ...]
    columns: tuple[Column, ...] | None = None


@dataclass(slots=True)
class Expect:
    """A response the server owes for a forwarded message, in order. Statements and
    portals are captured when the client sends, as pipelined messages may reuse names."""

    kind: str  # query | parse | bind | describe | execute | close | sync
    statement: Statement | None = None
    prepared: Prepared | None = None  # describe-statement: where its columns go
    portal: Portal | None = None  # describe-portal / execute


class _Stream:
    """One direction's byte stream, walked frame by frame.

    Frames of a `streamable` type are forwarded as they arrive, even in pieces, so a huge
    DataRow or CopyData never sits in memory; any other frame is handed over whole. The
    output is slices of the received bytes, joined by the transport, never copied here.
    """

    def __init__(self, what: str, limit: int) -> None:
        self.what = what
        self.limit = limit
        self.data = b""
        self.view = memoryview(b"")
        self.pos = 0
        self.out = 0
        self.skip = 0
        self.start = 0  # where the frame last returned by next() begins
        self.pieces: list[bytes | memoryview] = []

    def feed(self, data: bytes) -> None:
        rest = self.data[self.pos:]
        self.data = rest + data if rest else bytes(data)
        self.view = memoryview(self.data)
        self.pos = self.out = 0

    def next(self, streamable: frozenset[int]) -> tuple[int, int, int] | None:
        """(type, start, end) of the next whole frame to look at, or None: need more bytes."""
        data, pos, skip = self.data, self.pos, self.skip
        size = len(data)
        while True:
            if skip:
                if size - pos < skip:
                    self.pos, self.skip = size, skip - (size - pos)
                    return None
                pos, skip = pos + skip, 0
            if size - pos < 5:
                self.pos, self.skip = pos, 0
                return None
            kind, length = _FRAME.unpack_from(data, pos)
            if length < 4 or length > MAX_MESSAGE:
                self.pos, self.skip = pos, 0
                raise ProtocolViolation(f"{self.what} message {chr(kind)!r} has invalid length {length}")
            end = pos + 1 + length
            if kind in streamable:
                skip = end - pos
                continue
            if length > self.limit:
                self.pos, self.skip = pos, 0
                raise ProtocolViolation(f"{self.what} message {chr(kind)!r} of {length} bytes exceeds the "
                                        f"limit of {self.limit}")
            if end > size:
                self.pos, self.skip = pos, 0
                return None
            self.start, self.pos, self.skip = pos, end, 0
            return kind, pos, end

    def at_boundary(self) -> bool:
        return self.skip == 0

    def replace(self, start: int, end: int, new: list[bytes]) -> None:
        """Forward `new` in place of the frame at [start, end)."""
        if start > self.out:
            self.pieces.append(self.view[self.out:start])
        self.pieces.extend(new)
        self.out = end

    def stop(self, start: int) -> None:
        """Forward up to `start` and keep the rest for later (held or awaiting a lookup)."""
        if start > self.out:
            self.pieces.append(self.view[self.out:start])
        self.out = self.pos = start

    def cut(self, start: int) -> list[bytes | memoryview]:
        """What is ready before `start` (a frame already read), leaving the frame for later."""
        if start > self.out:
            self.pieces.append(self.view[self.out:start])
            self.out = start
        pieces, self.pieces = self.pieces, []
        return pieces

    def take(self) -> list[bytes | memoryview]:
        if self.pos > self.out:
            self.pieces.append(self.view[self.out:self.pos])
        self.out = self.pos
        pieces, self.pieces = self.pieces, []
        return pieces


class ProxySession:
    """Judges an agent's SQL and relays the rest; see the module docstring."""

    def __init__(self, *, judge: Callable[[str], Decision], database: str,
                 mask_factory: MaskFactory | None = None, clock: Callable[[], float] = time.monotonic,
                 client_limit: int = 256 << 20, server_limit: int = MAX_MESSAGE, nonce: str | None = None) -> None:
        self.judge = judge
        self.database = database
        self.mask_factory = mask_factory
        self.clock = clock
        self.sentinel = f"interceptor_denied_{nonce or secrets.token_hex(8)}"
        self._sentinel_bytes = self.sentinel.encode()
        self.status = b"I"
        self.closed = False
        self._client = _Stream("client", client_limit)
        self._server = _Stream("server", server_limit)
        self._expect: deque[Expect] = deque()
        self._statements: dict[str, Prepared] = {}
        self._portals: dict[str, Portal] = {}
        self._held: tuple[tuple[int, int, int], str | None, str, Decision] | None = None
        self._awaiting_tables: tuple[int, ...] = ()
        self._tables: dict[int, dict[int, str]] = {}
        self._to_client: list[bytes] = []  # enforcer messages waiting for a server frame boundary
        self._row_mask: RowMask | None = None

    # ---- client -> server ---------------------------------------------------------

    def from_client(self, data: bytes) -> list[Command]:
        """Commands for bytes the agent sent (b"" resumes after a hold was answered)."""
        stream = self._client
        if data:
            shift = stream.pos
            stream.feed(data)
            if self._held is not None:
                (kind, start, end), name, text, decision = self._held
                self._held = ((kind, start - shift, end - shift), name, text, decision)
        out: list[Command] = []
        try:
            while self._held is None and not self.closed:
                frame = stream.next(_STREAM_CLIENT)
                if frame is None:
                    break
                self._client_frame(frame, out)
        except ProtocolViolation as exc:
            return self._fatal(out, stream, "08P01", str(exc))
        _send(out, SERVER, stream.take())
        return out

    def _client_frame(self, frame: tuple[int, int, int], out: list[Command]) -> None:
        kind, start, end = frame
        body = self._client.view[start + 5:end]
        if kind == 0x51:  # Q
            self._judged(codec.read_query(body), None, frame, out)
        elif kind == 0x50:  # P
            parse = codec.read_parse(body)
            self._judged(parse.query, parse.statement, frame, out)
        elif kind == 0x42:  # B
            bind = codec.read_bind(body)
            self._portals[bind.portal] = Portal(self._statements.get(bind.statement), bind.parameters,
                                                bind.result_formats)
            self._expect.append(Expect("bind"))
        elif kind == 0x45:  # E
            self._execute(codec.read_execute(body), frame)
        elif kind == 0x44:  # D
            target, name = codec.read_target(body, "Describe")
            if target == "S":
                self._expect.append(Expect("describe", prepared=self._statements.get(name)))
            else:
                self._expect.append(Expect("describe", portal=self._portals.get(name)))
        elif kind == 0x43:  # C
            target, name = codec.read_target(body, "Close")
            (self._statements if target == "S" else self._portals).pop(name, None)
            self._expect.append(Expect("close"))
        elif kind == 0x53:  # S
            self._expect.append(Expect("sync"))
        elif kind == 0x58:  # X
            self.closed = True
            _send(out, SERVER, self._client.take())
            out.append(Close("client terminated the session"))
        elif kind == 0x46:  # F: fastpath function calls bypass SQL, so they are refused
            decision = Decision.deny("function-call", "fastpath FunctionCall is not allowed through the enforcer")
            self._deny(Statement("<FunctionCall>", decision, "function", self.clock()), frame, codec.query(self.sentinel))
        elif kind not in (0x48, 0x64, 0x63, 0x66):  # H, CopyData, CopyDone, CopyFail pass
            raise ProtocolViolation(f"invalid frontend message type {chr(kind)!r}")

    def _judged(self, text: str, name: str | None, frame: tuple[int, int, int], out: list[Command]) -> None:
        """Judge a Query (`name` None) or a Parse of statement `name`."""
        decision = self._decide(text)
        if decision.verdict is Verdict.APPROVE:
            self._held = (frame, name, text, decision)
            self._client.stop(frame[1])
            _send(out, SERVER, self._client.take())
            out.append(Hold(text, decision))
            return
        self._admit(text, name, frame, decision, None)

    def _admit(self, text: str, name: str | None, frame: tuple[int, int, int], decision: Decision,
               approval: dict[str, object] | None) -> None:
        statement = Statement(text, decision, "simple" if name is None else "extended", self.clock(),
                              approval=approval)
        if name is None:
            if statement.denied:
                self._deny(statement, frame, codec.query(self.sentinel))
            else:
                self._expect.append(Expect("query", statement))
            return
        if statement.denied:
            self._statements.pop(name, None)  # the server will not have it either
            self._deny(statement, frame, codec.parse(name, self.sentinel))
        else:
            self._statements[name] = Prepared(text, decision, approval)
            self._expect.append(Expect("parse"))

    def _deny(self, statement: Statement, frame: tuple[int, int, int], sentinel: bytes) -> None:
        self._client.replace(frame[1], frame[2], [sentinel])
        self._expect.append(Expect("query" if statement.via != "extended" else "parse", statement))

    def _execute(self, portal_name: str, frame: tuple[int, int, int]) -> None:
        portal = self._portals.get(portal_name)
        if portal is None or portal.prepared is None:
            # Unknown portal: the server will refuse it; nothing runs, nothing to audit.
            self._expect.append(Expect("execute"))
            return
        prepared = portal.prepared
        if prepared.one_shot_spent():
            rule = prepared.decision.rule
            denial = Decision.deny(rule, "the one-shot approval was used by an earlier execution; "
                                         "prepare the statement again to ask for a new approval")
            self._deny(Statement(prepared.text, denial, "extended", self.clock(), parameters=portal.parameters),
                       frame, codec.parse("", self.sentinel))
            return
        prepared.executions += 1
        statement = Statement(prepared.text, prepared.decision, "extended", self.clock(),
                              parameters=portal.parameters, approval=prepared.approval, prepared=prepared)
        self._expect.append(Expect("execute", statement, portal=portal))
        if len(self._expect) == 1:
            self._activate()

    def _decide(self, text: str) -> Decision:
        try:
            return self.judge(text)
        except Exception as exc:  # noqa: BLE001 - a policy failure must deny, not crash the session
            return Decision.deny("policy-error", f"policy evaluation failed: {exc}")

    def approval(self, approved: bool, request_id: str | None, reason: str, approver: str | None = None) -> list[Command]:
        """Resume after a Hold: run the statement or deny it, then continue with the client's bytes."""
        if self._held is None:
            raise RuntimeError("approval() without a pending Hold")
        frame, name, text, decision = self._held
        self._held = None
        info = {"approved": approved, "request_id": request_id, "approver": approver, "reason": reason}
        if not approved:
            decision = Decision(Verdict.DENY, decision.rule, reason or "not approved", decision.masks,
                                decision.approval, decision.details)
        self._client.pos = frame[2]
        self._admit(text, name, frame, decision, info)
        return self.from_client(b"")

    def waiting_notice(self, request_id: str | None, timeout_seconds: int) -> list[Command]:
        """Tell the agent its statement waits for approval (sent at a server frame boundary)."""
        note = codec.error_response(
            "01000", f"statement held for approval: request {request_id}", severity="NOTICE", notice=True,
            hint=f"ask an approver to run: interceptor approvals approve {request_id} "
                 f"(expires in {timeout_seconds} s)")
        self._to_client.append(note)
        if not self._server.at_boundary():
            return []
        out: list[Command] = []
        _send(out, CLIENT, self._take_inserts())
        return out

    # ---- server -> client ---------------------------------------------------------

    def from_server(self, data: bytes) -> list[Command]:
        """Commands for bytes the server sent (b"" resumes after `learn_tables`)."""
        stream = self._server
        if data:
            stream.feed(data)
        out: list[Command] = []
        try:
            while not self._awaiting_tables and not self.closed:
                if self._to_client and stream.at_boundary():
                    _send(out, CLIENT, stream.take() + self._take_inserts())
                frame = stream.next(_STREAM_SERVER if self._row_mask else _STREAM_SERVER_ROWS)
                if frame is None:
                    break
                self._server_frame(frame, out)
        except ProtocolViolation as exc:
            return self._fatal(out, stream, "08P01", f"upstream: {exc}")
        except ValueError as exc:  # a value that cannot be masked safely: never forward it
            return self._fatal(out, stream, "42501", f"result withheld: {exc}")
        pieces = stream.take()
        if self._to_client and stream.at_boundary():
            pieces += self._take_inserts()
        _send(out, CLIENT, pieces)
        return out

    def _server_frame(self, frame: tuple[int, int, int], out: list[Command]) -> None:
        kind, start, end = frame
        if kind in _ASYNC:
            return
        body = self._server.view[start + 5:end]
        head = self._expect[0] if self._expect else None
        if kind == 0x44:  # D, only when a row mask is active
            self._server.replace(start, end, [_frame(b"D", self._row_mask(body))])
        elif kind == 0x54:  # T
            self._row_description(frame, body, head, out)
        elif kind == 0x43:  # C
            tag = codec.text(body[:-1], "CommandComplete")
            if head is not None and head.statement is not None:
                head.statement.command = tag
                rows = codec.command_rows(tag)
                if rows is not None:
                    head.statement.rows = (head.statement.rows or 0) + rows
            if head is not None and head.kind == "execute":
                self._finish(frame, out)
        elif kind in (0x49, 0x73):  # EmptyQueryResponse, PortalSuspended
            if head is not None and head.kind == "execute":
                self._finish(frame, out)
        elif kind == 0x45:  # E
            self._error(frame, body, head, out)
        elif kind == 0x5A:  # Z
            self.status = bytes(body[:1])
            if head is not None and head.kind in ("query", "sync"):
                self._finish(frame, out)
        elif kind in (0x31, 0x32, 0x33, 0x6E):  # ParseComplete, BindComplete, CloseComplete, NoData
            if head is not None and head.kind in ("parse", "bind", "close", "describe"):
                self._pop()

    def _row_description(self, frame: tuple[int, int, int], body: memoryview, head: Expect | None,
                         out: list[Command]) -> None:
        if head is None:
            return
        prepared = head.prepared or (head.portal.prepared if head.portal else None)
        decision = head.statement.decision if head.statement else (prepared.decision if prepared else None)
        if decision is not None and decision.masks:
            columns = codec.read_row_description(body)
            missing = tuple(sorted({c.table_oid for c in columns if c.table_oid and c.table_oid not in self._tables}))
            if missing:
                self._awaiting_tables = missing
                self._server.stop(frame[1])
                _send(out, CLIENT, self._server.take())  # what came before stays before
                out.append(ResolveTables(missing))
                return
            if head.kind == "query":
                self._row_mask = self._mask_for(decision, columns)
            elif head.prepared is not None:
                head.prepared.columns = columns
            elif head.portal is not None:
                head.portal.columns = columns
        if head.kind == "describe":
            self._pop()

    def learn_tables(self, tables: dict[int, dict[int, str]]) -> list[Command]:
        """Qualified `schema.table.column` names by table OID and attnum; resumes the result."""
        for oid in self._awaiting_tables:
            self._tables[oid] = tables.get(oid, {})
        self._awaiting_tables = ()
        return self.from_server(b"")

    def _mask_for(self, decision: Decision, columns: tuple[Column, ...]) -> RowMask | None:
        if self.mask_factory is None:
            return _withheld("the policy masks this result but no masker is configured")
        names = [self._tables.get(c.table_oid, {}).get(c.attnum) if c.table_oid else None for c in columns]
        for position, source in _derived_from_masked(decision).items():
            if position < len(names):
                names[position] = source  # a computed column is masked like the column it comes from
        return self.mask_factory(decision.masks, columns, tuple(names))

    def _error(self, frame: tuple[int, int, int], body: memoryview, head: Expect | None, out: list[Command]) -> None:
        statement = head.statement if head is not None else None
        replacement = None
        if statement is not None and statement.denied and self._sentinel_bytes in bytes(body):
            decision = statement.decision
            statement.error = f"permission denied by interceptor rule {decision.rule!r}: {decision.reason or 'denied'}"
            replacement = codec.error_response("42501", statement.error)
        elif statement is not None:
            statement.error = codec.read_fields(body).get("M", "error")
        if head is not None and head.kind not in ("query", "sync"):
            self._finish(frame, out)
            while self._expect and self._expect[0].kind != "sync":
                self._expect.popleft()  # the server skips these until Sync
            self._row_mask = None
        if replacement is not None:
            self._server.replace(frame[1], frame[2], [replacement])

    def _finish(self, frame: tuple[int, int, int], out: list[Command]) -> None:
        """Pop the head; if it was a statement, audit it before the frame that ends it."""
        statement = self._pop().statement
        if statement is not None:
            _send(out, CLIENT, self._server.cut(frame[1]))
            out.append(self._audit(statement))

    def _pop(self) -> Expect:
        head = self._expect.popleft()
        self._activate()
        return head

    def _activate(self) -> None:
        """Rows stream untouched unless the response now due is an Execute the policy masks."""
        self._row_mask = None
        head = self._expect[0] if self._expect else None
        if head is not None and head.kind == "execute" and head.portal is not None:
            prepared = head.portal.prepared
            if prepared is not None and prepared.decision.masks:
                self._row_mask = self._execute_mask(head.portal, prepared)

    def _execute_mask(self, portal: Portal, prepared: Prepared) -> RowMask | None:
        columns = portal.columns
        if columns is None and prepared.columns is not None:
            columns = tuple(_with_format(c, portal.formats, i) for i, c in enumerate(prepared.columns))
        if columns is None:
            return _withheld("the policy masks this statement's result but its columns were never described")
        try:
            return self._mask_for(prepared.decision, columns)
        except ValueError as exc:  # raised when the first row arrives, on the server side
            return _withheld(str(exc))

    def _audit(self, statement: Statement) -> Audit:
        prepared = statement.prepared
        if prepared is None:
            operation: dict[str, object] = self._operation(statement)
        else:  # executed again and again: its summary is scrubbed and encoded once
            if prepared.operation is None or prepared.operation.get("parameters", 0) != statement.parameters:
                prepared.operation = SharedSummary(self._operation(statement))
            operation = prepared.operation
        outcome: dict[str, object] = {
            "rows": statement.rows, "command": statement.command, "error": statement.error,
            "duration_ms": round((self.clock() - statement.started) * 1000, 3),
        }
        if statement.approval is not None:
            outcome["approval"] = statement.approval
        return Audit(statement.decision, operation, outcome)

    def _operation(self, statement: Statement) -> dict[str, object]:
        operation: dict[str, object] = {
            "protocol": "postgres", "database": self.database, "via": statement.via,
            "statement": redact_literals(statement.text),
        }
        if statement.parameters:
            operation["parameters"] = statement.parameters
        return operation

    # ---- shared ---------------------------------------------------------------------

    def _take_inserts(self) -> list[bytes]:
        inserts, self._to_client = self._to_client, []
        return inserts

    def _fatal(self, out: list[Command], stream: _Stream, code: str, message: str) -> list[Command]:
        """Bad input: tell the client why (at a frame boundary when possible) and close."""
        self.closed = True
        pieces = self._server.cut(self._server.start) if stream is self._server else []
        if self._server.at_boundary():
            pieces = pieces + [codec.error_response(code, message, severity="FATAL")]
        _send(out, CLIENT, pieces)
        out.append(Close(message))
        return out


def _send(out: list[Command], to: str, pieces: list) -> None:
    if pieces:
        out.append(Send(to, pieces))


def _frame(kind: bytes, body: bytes) -> bytes:
    return kind + codec.INT32.pack(len(body) + 4) + body


def _with_format(column: Column, formats: tuple[int, ...], index: int) -> Column:
    fmt = formats[index] if len(formats) > 1 else (formats[0] if formats else 0)
    return Column(column.name, column.table_oid, column.attnum, column.type_oid, fmt)


def _withheld(reason: str) -> RowMask:
    def refuse(body: memoryview) -> bytes:
        raise ValueError(reason)
    return refuse

