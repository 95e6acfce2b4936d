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

This module is the state machine; the framing is frames.py's, the records of the server's
state state.py's, the cursors cursors.py's, a result's row rewriter result_masks.py's and a
statement's audit record record.py's.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from interceptor.decision import Decision, Judge, Verdict
from interceptor.errors import ClientProtocolError, InterceptorError, MaskingError, ProtocolViolation, ServerProtocolError
from interceptor.handlers.commands import Await, Close, Command, Hold, HoldOutcome, Record, Send, Side, StreamId
from interceptor.handlers.postgres import codec
from interceptor.handlers.postgres.cursors import Cursors
from interceptor.handlers.postgres.frames import MAX_MESSAGE, Frame, FrameRelay
from interceptor.handlers.postgres.masks import MaskFactory, RowMask, scrub_error_text, withhold_error_text
from interceptor.handlers.postgres.names import record
from interceptor.handlers.postgres.record import redact_literals, statement_record
from interceptor.handlers.postgres.result_masks import ResultMasks, described
from interceptor.handlers.postgres.state import (
    Context, Expect, Portal, Prepared, Statement, catalog_version, changes_catalog, decision_of, effects_of, quiet,
    settled,
)
from interceptor.operations import SqlQuery
from interceptor.policy.catalog import Catalog, CatalogUnavailable
from interceptor.policy.encodings import EncodingRefused, canonical, client_only, python_codec
from interceptor.policy.settings import Effect, SessionSettings
from interceptor.policy.statement import (
    CATALOG_UNAVAILABLE, CATALOG_UNKNOWN_FUNCTION, CATALOG_UNKNOWN_RELATION, CATALOG_UNKNOWN_TYPE,
)

FRONTEND, BACKEND = 0, 1  # the session's streams: what the client sent, what the server sent
CLIENT_TERMINATED = "client terminated the session"
SERVER_CLOSED = "the server closed the connection"
NORMAL_ENDS = frozenset({CLIENT_TERMINATED, SERVER_CLOSED})  # a session's ends that are no error
_STREAM_CLIENT = frozenset(b"d")  # CopyData from the client is forwarded as it arrives
_STREAM_SERVER = frozenset(b"d")
_STREAM_SERVER_ROWS = frozenset(b"dD")
_ASYNC = frozenset(b"NA")  # notices, notifications: any time, no state
_EXTENDED = frozenset(b"PBEDCH")  # messages of an extended-query segment (until Sync)
_FLUSH = b"H\x00\x00\x00\x04"
_WAIT_LIMIT = 16 << 20  # bytes an agent may pipeline while the enforcer waits for the server
_CATALOG_MISSES = frozenset({CATALOG_UNKNOWN_RELATION, CATALOG_UNKNOWN_FUNCTION, CATALOG_UNKNOWN_TYPE,
                             CATALOG_UNAVAILABLE})


@dataclass(frozen=True, slots=True)
class RefreshCatalog(Await):
    """Read the catalog again, then answer with `ProxySession.catalog_refreshed`: after DDL
    the enforcer let through (`after_ddl`), or for a name the catalog does not hold, which DDL
    made elsewhere may have created since (then at most every few seconds). `for_result`: a
    result names a table the catalog does not hold."""

    after_ddl: bool = True
    for_result: bool = False


class ProxySession:
    """Judges an agent's SQL and relays the rest; see the module docstring.

    The session follows the server's state as it applies it: the settings that decide how
    a statement reads (search_path, client_encoding, role; `predicted` after what was let
    through, `confirmed` after what the server answered), the prepared statements and
    portals by name, and the catalog. A statement is judged in the state it will run in;
    where that depends on an answer still to come (a setting changed earlier in a pipeline,
    DDL that changes the catalog), the agent's next messages wait for it.
    """

    def __init__(self, *, judge: Judge, database: str,
                 catalog: Callable[[], Catalog | CatalogUnavailable | None] = lambda: None,
                 epoch: Callable[[], object] = lambda: None, settings: SessionSettings | None = None,
                 server_encoding: str = "UTF8", mask_factory: MaskFactory | None = None,
                 clock: Callable[[], float] = time.monotonic, client_limit: int = 256 << 20,
                 server_limit: int = MAX_MESSAGE, nonce: str | None = None, scan_errors: bool = True) -> None:
        self.judge = judge
        self.scan_errors = scan_errors  # run the classifiers on every error and notice text
        self.database = database
        self.catalog = catalog
        self.epoch = epoch
        self.server_encoding = server_encoding
        self.clock = clock
        self.sentinel = f"interceptor_denied_{nonce or secrets.token_hex(8)}"
        self._sentinel_bytes = self.sentinel.encode()
        self.status = b"I"
        self.closed = False
        self.confirmed = settings or SessionSettings.start({})
        self.predicted = self.confirmed.copy()
        self._defaults = tuple(self.confirmed.defaults.items())
        self._touched = False  # predicted has changes the server has not confirmed yet
        self._snapshot_of: dict[str, str | None] = dict(self.predicted.values)  # what `_snapshot` was made of
        self._snapshot = self.predicted.snapshot()
        self._codec = self._client_codec(self.predicted)
        self._reported_encoding: str | None = None
        self._catalog_stale = False  # DDL was let through: read the catalog before judging more
        self._reread = False  # the catalog was read again for the statement being judged
        self._client = FrameRelay("client", client_limit)
        self._server = FrameRelay("server", server_limit)
        self._expect: deque[Expect] = deque()
        self._statements: dict[str, Prepared] = {}
        self._portals: dict[str, Portal] = {}
        self._cursors = Cursors(epoch)
        self._segment = 0  # extended-query segments (and Queries) sent so far
        self._in_segment = False  # an extended-query message came since the last Sync
        self._doomed = False  # a refusal was sent in this segment: the server skips to Sync
        self._copy_in = False  # the server reads the client's messages as a COPY FROM STDIN's until CopyDone
        self._waiting: str | None = None  # why the client's next message waits for the server
        self._held: tuple[Frame, str | None, str, Decision] | None = None
        self._stream: StreamId = FRONTEND  # the stream of the input being handled
        self._awaiting_tables = False  # a result waits for the catalog to be read again
        self._tables_reread = False  # it was, for the result now being described
        # the last RowDescription's columns found whole in this catalog (a prepared statement's
        # result is described again at every execution: checked once)
        self._known_columns: tuple[codec.Column, ...] | None = None
        self._known_catalog: Catalog | CatalogUnavailable | None = None
        self._to_client: list[bytes | memoryview] = []  # enforcer messages waiting for a server frame boundary
        self._row_mask: RowMask | None = None
        self._masks = ResultMasks(mask_factory)

    # ---- the driver's side (interceptor.handlers.commands.Session) -------------------

    def input_stream(self, side: Side) -> StreamId:
        return FRONTEND if side is Side.CLIENT else BACKEND

    def receive(self, side: Side, data: bytes) -> list[Command]:
        if side is Side.CLIENT:
            self._stream = FRONTEND
            return self.from_client(data)
        self._stream = BACKEND
        return self.from_server(data)

    def ended(self, side: Side) -> list[Command]:
        """Either side's end ends the session (a held statement is recorded as never run)."""
        return [Close(CLIENT_TERMINATED if side is Side.CLIENT else SERVER_CLOSED)]

    def opened(self, stream: StreamId, error: str | None) -> list[Command]:
        raise TypeError("the handler logs in upstream before the session starts; it sends no Open")

    def catalog_refreshed(self, command: RefreshCatalog) -> list[Command]:
        """The catalog was read again (`RefreshCatalog`): judging, or the result, resumes."""
        self._stream = command.stream
        return self.tables_read() if command.for_result else self.catalog_read()

    # ---- client -> server ---------------------------------------------------------

    def from_client(self, data: bytes) -> list[Command]:
        """Commands for bytes the agent sent (b"" resumes after a hold or a wait)."""
        stream = self._client
        if data:
            shift = stream.pos
            stream.feed(data)
            if self._held is not None:
                (kind, start, end), name, text, decision = self._held
                self._held = ((kind, start - shift, end - shift), name, text, decision)
        out: list[Command] = []
        try:
            waiting = self._waiting or (self._held and "a statement held for approval")
            if waiting and len(stream.data) - stream.pos > _WAIT_LIMIT:
                raise ProtocolViolation(f"more than {_WAIT_LIMIT} bytes pipelined while the enforcer waits ({waiting})")
            while self._held is None and self._waiting is None and not self.closed:
                frame = stream.next(_STREAM_CLIENT)
                if frame is None:
                    break
                self._client_frame(frame, out)
        except ProtocolViolation as exc:
            return self._fatal(out, stream, ClientProtocolError(str(exc)))
        self._send(out, Side.SERVER, stream.take())
        return out

    def _client_frame(self, frame: Frame, out: list[Command]) -> None:
        kind, start, end = frame
        if self._copy_in and kind != 0x58:  # Terminate ends the session as ever
            self._copying(kind)
            return
        if kind in _EXTENDED or kind == 0x51:  # a statement may start here: judged in a settled state
            if (kind == 0x51 or not self._in_segment) and not self._settle(frame, out):
                return
            if kind != 0x51:
                self._in_segment = True
            if self._doomed:
                self._discarded(kind, frame)
                return
        body = self._client.view[start + 5:end]
        if kind == 0x51:  # Q
            self._segment += 1
            self._judged(codec.read_query(body, self._codec), None, frame, out)
        elif kind == 0x50:  # P
            parse = codec.read_parse(body, self._codec)
            self._judged(parse.query, parse.statement, frame, out)
        elif kind == 0x42:  # B
            self._bind(codec.read_bind(body, self._codec), frame)
        elif kind == 0x45:  # E
            self._execute(codec.read_execute(body, self._codec), frame, out)
        elif kind == 0x44:  # D
            target, name = codec.read_target(body, "Describe", self._codec)
            if target == "S":
                self._expect.append(Expect("describe", prepared=self._statements.get(name)))
            else:
                portal = self._portals.get(name)
                if portal is not None:
                    portal.described = portal.decision
                self._expect.append(Expect("describe", portal=portal))
        elif kind == 0x43:  # C
            target, name = codec.read_target(body, "Close", self._codec)
            table = self._statements if target == "S" else self._portals
            if target != "S" and self._cursors.held:
                self._cursors.replaced(name)  # a cursor of that name is the portal it closes (one namespace)
            self._expect.append(Expect("close", change=record(table, name, None)))
        elif kind == 0x53:  # S
            self._segment += 1
            self._in_segment = self._doomed = False
            self._expect.append(Expect("sync", segment=self._segment))
        elif kind == 0x58:  # X
            self.closed = True
            self._send(out, Side.SERVER, self._client.take())
            out.append(Close(CLIENT_TERMINATED, self._stream))
        elif kind == 0x46 and self._doomed:  # F: refused; the server discards what stands in for it
            self._client.replace(frame[1], frame[2], [codec.parse(self.sentinel, self.sentinel)])
        elif kind == 0x46:  # F: fastpath function calls bypass SQL, so they are refused
            decision = Decision.deny("function-call", "fastpath FunctionCall is not allowed through the enforcer")
            self._deny(Statement("<FunctionCall>", decision, "function", self.clock()), frame, codec.query(self.sentinel))
        elif kind in (0x63, 0x66) and self._expect:  # CopyDone, CopyFail: where a copy-in would end
            self._expect.append(Expect("copy-end"))
        elif kind not in (0x48, 0x64, 0x63, 0x66):  # H, CopyData, CopyDone, CopyFail pass
            raise ProtocolViolation(f"invalid frontend message type {chr(kind)!r}")

    def _copying(self, kind: int) -> None:
        """A message while the server is in copy-in mode: it reads each as the copy's (docs,
        55.2.6): CopyData and Flush pass, CopyDone and CopyFail end the mode, and any other
        message the server would consume as the copy's error, never running or answering it
        (a Sync too, once the server may have left the mode on an error of its own): refused."""
        if kind in (0x63, 0x66):
            self._copy_in = False
        elif kind not in (0x64, 0x48):
            raise ProtocolViolation(f"message type {chr(kind)!r} during COPY FROM STDIN: the server takes it for "
                                    "the copy's data, not as a message of its own")

    def _discarded(self, kind: int, frame: Frame) -> None:
        """A message after a refusal in the same segment: the server discards every message
        until Sync (docs, 55.2.3), so no answer is expected and nothing is recorded. A statement
        text among them is still judged, and goes on only if it would be let through on its
        own; else a sentinel Parse that creates nothing takes its place."""
        if kind not in (0x50, 0x51):
            return
        body = self._client.view[frame[1] + 5:frame[2]]
        text = codec.read_query(body, self._codec) if kind == 0x51 else codec.read_parse(body, self._codec).query
        if self._decide(text).verdict is not Verdict.ALLOW:
            self._client.replace(frame[1], frame[2], [codec.parse(self.sentinel, self.sentinel)])

    def _settle(self, frame: Frame, out: list[Command]) -> bool:
        """At the start of a statement's segment: may it be judged now? Not while the server
        still owes answers that may change the settings it will run with, or DDL let through
        may have changed the catalog; then the client waits (False) and `from_server` resumes
        it once the server is idle."""
        if self._expect:
            if self._touched or self._catalog_stale or not quiet(self.confirmed):
                self._pause(frame, out, "a pipelined statement may change the session's settings or catalog")
                return False
            return True
        self._touched = False
        if self.predicted != self.confirmed:  # errors and rollbacks are known only to `confirmed`
            self.predicted = self.confirmed.copy()
            self._codec = self._client_codec(self.predicted)
        if self._catalog_stale:
            self._pause(frame, out, "reading the catalog again after DDL")
            out.append(RefreshCatalog(self._stream, after_ddl=True))
            return False
        return True

    def _pause(self, frame: Frame, out: list[Command], why: str) -> None:
        """Keep the client's bytes from `frame` on for later; a Flush makes the server send
        what it owes even if the client sent no Sync (its answers are what the wait is for)."""
        self._waiting = why
        self._client.stop(frame[1])
        self._send(out, Side.SERVER, [*self._client.take(), *([_FLUSH] if self._expect else [])])

    def catalog_read(self) -> list[Command]:
        """The catalog was read again after DDL (`RefreshCatalog`): judging resumes."""
        self._catalog_stale = False
        self._waiting = None
        return self.from_client(b"")

    def _judged(self, text: str, name: str | None, frame: Frame, out: list[Command]) -> None:
        """Judge a Query (`name` None) or a Parse of statement `name`; a name the catalog
        does not hold has the catalog read again once before it is refused."""
        decision = self._decide(text)
        if decision.rule in _CATALOG_MISSES and not self._reread:
            self._reread = True
            self._pause(frame, out, "reading the catalog again for a name it does not hold")
            out.append(RefreshCatalog(self._stream, after_ddl=False))
            return
        self._reread = False
        if decision.verdict is Verdict.APPROVE:
            self._held = (frame, name, text, decision)
            self._client.stop(frame[1])
            self._send(out, Side.SERVER, self._client.take())
            out.append(Hold(SqlQuery(text, self.database, self.predicted.snapshot()), decision, self._stream))
            return
        self._admit(text, name, frame, decision, None)

    def _admit(self, text: str, name: str | None, frame: Frame, decision: Decision,
               approval: dict[str, object] | None, cancelled: bool = False) -> None:
        statement = Statement(text, decision, "simple" if name is None else "extended", self.clock(),
                              approval=approval, effects=effects_of(decision), cancelled=cancelled)
        if statement.denied:
            if name is None:
                self._deny(statement, frame, codec.query(self.sentinel))
            else:
                if name == "":
                    self._statements.pop("", None)  # the server drops the unnamed statement first
                self._deny(statement, frame, codec.parse(name, self.sentinel))
            return
        self._catalog_stale |= changes_catalog(decision)
        self._cursors.closed_by(decision, self._portals)
        if name is None:
            self._expect.append(Expect("query", statement, segment=self._segment))
            for effects in statement.effects:
                self._predict(effects)
            return
        prepared = Prepared(text, decision, self._context(), approval)
        self._expect.append(Expect("parse", change=record(self._statements, name, prepared)))

    def _deny(self, statement: Statement, frame: Frame, sentinel: bytes) -> None:
        self._client.replace(frame[1], frame[2], [sentinel])
        extended = statement.via == "extended"
        self._doomed |= extended
        self._expect.append(Expect("parse" if extended else "query", statement, segment=self._segment))

    def _refuse(self, text: str, rule: str, reason: str, frame: Frame, parameters: int = 0) -> None:
        """Refuse a Bind or Execute: a Parse of a name that is never created stands in for it."""
        statement = Statement(text, Decision.deny(rule, reason), "extended", self.clock(), parameters=parameters)
        self._deny(statement, frame, codec.parse(self.sentinel, self.sentinel))

    def _bind(self, bind: codec.Bind, frame: Frame) -> None:
        prepared = self._statements.get(bind.statement)
        if prepared is None:
            self._refuse(f"<Bind of {bind.statement or 'the unnamed statement'}>", "unknown-statement",
                         f"prepared statement {bind.statement!r} is not one the enforcer judged (it was never "
                         "prepared through the enforcer, or was refused, closed or deallocated)", frame)
            return
        context = self._context()
        decision = self._rejudged(prepared, context, self.predicted)
        if decision.verdict is Verdict.DENY:
            self._refuse(prepared.text, decision.rule, decision.reason, frame, bind.parameters)
            return
        portal = Portal(prepared, decision, context, bind.parameters, bind.result_formats, self._segment)
        if self._cursors.held:
            self._cursors.replaced(bind.portal)
        self._expect.append(Expect("bind", change=record(self._portals, bind.portal, portal)))

    def _rejudged(self, prepared: Prepared, context: Context, settings: SessionSettings) -> Decision:
        """The prepared statement's decision in `context`: judged again when the policy, the
        identity, the settings or the catalog changed since (the server re-analyses a
        statement when its search_path changed: docs, PREPARE, Notes)."""
        if context == prepared.context:
            return prepared.decision
        decision = self._decide(prepared.text, settings)
        if decision.verdict is Verdict.APPROVE and not (prepared.approval and prepared.approval.get("approved")
                                                       and decision.rule == prepared.decision.rule):
            decision = Decision(Verdict.DENY, decision.rule, "this statement now needs approval (the policy, "
                                "identity or session changed since it was prepared); prepare it again",
                                details=decision.details, shadow=decision.shadow)
        if settings is self.predicted:
            prepared.decision, prepared.context = decision, context
        return decision

    def _execute(self, portal_name: str, frame: Frame, out: list[Command]) -> None:
        portal = self._portals.get(portal_name)
        if portal is not None and portal.segment != self._segment and self._expect:
            # Bound before a Sync (or Query) the server has not answered: its transaction may have
            # ended, and the name be another portal's by then (a cursor a function OPENed): the
            # Execute waits for the server, whose ReadyForQuery says whether the portal lives on.
            self._pause(frame, out, "an Execute of a portal whose transaction may have ended")
            return
        if portal is None:
            self._refuse(f"<Execute of {portal_name or 'the unnamed portal'}>", "unknown-portal",
                         f"portal {portal_name!r} is not one the enforcer judged (never bound through the "
                         "enforcer, refused, closed, or ended with its transaction)", frame)
            return
        prepared = portal.prepared
        epoch = self.epoch()
        if epoch != portal.context[0]:  # a reload or identity change between Bind and Execute
            bound = SessionSettings.of(portal.context[1], self._defaults)
            portal.decision = self._rejudged(prepared, (epoch, *portal.context[1:]), bound)
            portal.context = (epoch, *portal.context[1:])
            if portal.decision.verdict is Verdict.DENY:
                self._refuse(prepared.text, portal.decision.rule, portal.decision.reason, frame, portal.parameters)
                return
        if prepared.approval is not None and prepared.one_shot_spent():
            self._refuse(prepared.text, prepared.decision.rule, "the one-shot approval was used by an earlier "
                         "execution; prepare the statement again to ask for a new approval", frame, portal.parameters)
            return
        prepared.executions += 1
        statement = Statement(prepared.text, portal.decision, "extended", self.clock(), parameters=portal.parameters,
                              approval=prepared.approval, prepared=prepared, effects=prepared.effects(portal.decision))
        for effects in statement.effects:
            if effects:  # most statements change nothing in the session
                self._predict(effects)
        if (portal.decision.masks and portal.columns is None and prepared.columns is None
                and (portal.described is not portal.decision or portal.segment != self._segment)):
            # The client never asked what the result holds (or asked under another decision, or
            # in another segment than the Bind's: after a Sync the server's portal of that name
            # may be another, a cursor DECLAREd once the Bind's transaction ended, and a Describe
            # skipped after an error answered nothing): the enforcer asks the server (Describe of
            # the portal, docs 55.2.3) so its rows are masked by the server's word. A Describe
            # the client sent in this segment is answered first.
            describe = codec.message(b"D", b"P" + bytes(self._client.view[frame[1] + 5:frame[2] - 4]))
            self._client.replace(frame[1], frame[2], [describe, self._client.view[frame[1]:frame[2]]])
            self._expect.append(Expect("describe", portal=portal, internal=True))
        self._expect.append(Expect("execute", statement, portal=portal))
        if len(self._expect) == 1:
            self._activate()

    def _predict(self, effects: tuple[Effect, ...]) -> None:
        """What a statement let through will change once it runs: later statements of the
        same segment are judged with it (if it fails, the server skips them)."""
        for effect in effects:
            if effect.kind in ("deallocate", "deallocate_all", "discard_all"):
                self._deallocate(effect)
            before = dict(self.predicted.values)  # apply() may change the dict in place
            self.predicted.apply(effect)
            if self.predicted.values != before or not quiet(self.predicted):
                self._touched = True
        if effects:  # most statements change nothing: no codec lookup on every Execute
            self._codec = self._client_codec(self.predicted)

    def _deallocate(self, effect: Effect) -> None:
        if effect.kind == "deallocate" and effect.name is not None:
            self._statements.pop(effect.name, None)
        else:
            self._statements.clear()
        if effect.kind == "discard_all":
            self._cursors.clear()

    def _context(self) -> Context:
        values = self.predicted.values
        if values != self._snapshot_of:  # the settings' snapshot is made again only when they changed
            self._snapshot_of, self._snapshot = dict(values), self.predicted.snapshot()
        return self.epoch(), self._snapshot, catalog_version(self.catalog()), self._cursors.version

    def _decide(self, text: str, settings: SessionSettings | None = None) -> Decision:
        state = settings or self.predicted
        try:
            decision = self.judge.decide(SqlQuery(text, self.database, state.snapshot(), self._defaults, self.catalog()))
        except Exception as exc:  # noqa: BLE001 - a policy failure must deny, not crash the session
            return Decision.deny("policy-error", f"policy evaluation failed: {exc}")
        return self._cursors.judged(text, decision, state, self._portals, self._decide)

    def _client_codec(self, settings: SessionSettings) -> str:
        try:
            return python_codec(settings.get("client_encoding") or self.server_encoding, self.server_encoding)
        except EncodingRefused as exc:
            raise ProtocolViolation(str(exc)) from None

    def approval(self, stream: StreamId, outcome: HoldOutcome) -> list[Command]:
        """Resume after a Hold: run the statement or deny it, then continue with the client's
        bytes. `outcome.cancelled`: the client's CancelRequest withdrew the request; the client
        gets 57014 query_canceled (as from a server cancel, docs 55.2.7), the session goes on."""
        if self._held is None:
            raise RuntimeError("approval() without a pending Hold")
        self._stream = stream
        frame, name, text, decision = self._held
        self._held = None
        cancelled = outcome.cancelled
        info: dict[str, object] = {"approved": outcome.approved and not cancelled, "request_id": outcome.request_id,
                "approver": outcome.approver, "reason": outcome.reason, **({"cancelled": True} if cancelled else {})}
        if cancelled or not outcome.approved:
            decision = Decision(Verdict.DENY, decision.rule, outcome.reason or "not approved", decision.masks,
                                decision.approval, decision.details, decision.shadow)
        self._client.pos = frame[2]
        if self._doomed:  # its segment failed on the server while it was held: the server skips it
            self._discarded(frame[0], frame)
        else:
            self._admit(text, name, frame, decision, info, cancelled)
        return self.from_client(b"")

    def abandoned(self, stream: StreamId, request_id: str | None, reason: str) -> Record | None:
        """The audit record of the held statement when its client went away before a decision:
        denied with `reason`, never run. None when nothing is held."""
        if self._held is None:
            return None
        _, name, text, decision = self._held
        self._held = None
        self._stream = stream
        denied = Decision(Verdict.DENY, decision.rule, reason, (), decision.approval, decision.details, decision.shadow)
        statement = Statement(text, denied, "simple" if name is None else "extended", self.clock(), error=reason,
                              approval={"approved": False, "request_id": request_id, "reason": reason,
                                        "withdrawn": True})
        return statement_record(statement, self.database, self.clock(), self._stream)

    def waiting(self, stream: StreamId, request_id: str | None, timeout_seconds: int) -> list[Command]:
        """Tell the agent its statement waits for approval (a NoticeResponse, sent at a server
        frame boundary)."""
        note = codec.error_response(
            "01000", f"statement held for approval: request {request_id}", severity="NOTICE", notice=True,
            hint=f"ask an approver to run: interceptor approvals approve {request_id} "
                 f"(expires in {timeout_seconds} s)")
        self._to_client.append(note)
        self._stream = stream
        if not self._server.at_boundary():
            return []
        out: list[Command] = []
        self._send(out, Side.CLIENT, self._take_inserts())
        return out

    # ---- server -> client ---------------------------------------------------------

    def from_server(self, data: bytes) -> list[Command]:
        """Commands for bytes the server sent (b"" resumes after `tables_read`)."""
        stream = self._server
        if data:
            stream.feed(data)
        out: list[Command] = []
        try:
            while not self._awaiting_tables and not self.closed:
                if self._to_client and stream.at_boundary():
                    self._send(out, Side.CLIENT, stream.take() + self._take_inserts())
                frame = stream.next(_STREAM_SERVER if self._row_mask else _STREAM_SERVER_ROWS)
                if frame is None:
                    break
                self._server_frame(frame, out)
        except ProtocolViolation as exc:
            return self._fatal(out, stream, ServerProtocolError(f"upstream: {exc}"))
        except MaskingError as exc:  # a value that cannot be masked safely: never forward it
            return self._fatal(out, stream, MaskingError(f"result withheld: {exc}"))
        pieces = stream.take()
        if self._to_client and stream.at_boundary():
            pieces += self._take_inserts()
        self._send(out, Side.CLIENT, pieces)
        if self._waiting is not None and not self._expect and not self.closed:
            out += self._resume()
        return out

    def _resume(self) -> list[Command]:
        """The server is idle: a client message waiting for it is judged now, in the client's
        stream (a Hold it meets stops the client's input, not the server's)."""
        self._waiting = None
        self._stream = FRONTEND
        return self.from_client(b"")

    def _server_frame(self, frame: Frame, out: list[Command]) -> None:
        kind, start, end = frame
        body = self._server.view[start + 5:end]
        if kind in _ASYNC:
            head = self._expect[0] if self._expect else None
            checked = self._checked_text(b"N", body, head) if kind == 0x4E else None
            if checked is not None:  # a NoticeResponse that may quote a masked value
                self._server.replace(start, end, [checked])
            return
        if kind == 0x53:  # ParameterStatus
            self._parameter_status(body)
            return
        head = self._expect[0] if self._expect else None
        if kind == 0x44 and self._row_mask is not None:  # D is only taken apart when a row mask is active
            self._server.replace(start, end, [_frame(b"D", self._row_mask(body))])
        elif kind == 0x54:  # T
            self._row_description(frame, body, head, out)
        elif kind == 0x43:  # C
            self._command_complete(frame, *codec.read_command_complete(body), head, out)
        elif kind in (0x49, 0x73):  # EmptyQueryResponse, PortalSuspended
            if head is not None and head.kind == "execute":
                self._finish(frame, out)
        elif kind == 0x45:  # E
            self._error(frame, body, head, out)
        elif kind == 0x5A:  # Z
            self._ready(frame, bytes(body[:1]), head, out)
        elif kind == 0x47:  # CopyInResponse
            self._copy_started()
        elif kind in (0x31, 0x32, 0x33, 0x6E):  # ParseComplete, BindComplete, CloseComplete, NoData
            if head is not None and head.kind in ("parse", "bind", "close", "describe"):
                if head.internal:
                    self._server.replace(start, end, [])
                self._pop()

    def _copy_started(self) -> None:
        """The server entered copy-in mode for the statement at the head: it reads what the
        client sent after that statement, up to its CopyDone or CopyFail, as the copy's. A Sync
        among them it ignores (libpq sends one after the Execute of a COPY); any other message it
        consumes as an error without running it, and the session, owing it an answer, would take
        later answers for it: refused."""
        if not self._expect:
            raise ProtocolViolation("CopyInResponse while no statement runs")
        head, *queued = self._expect
        ignored = 0  # Syncs the server ignores, then the client's CopyDone if it was sent
        while ignored < len(queued) and queued[ignored].kind == "sync":
            ignored += 1
        ended = ignored < len(queued) and queued[ignored].kind == "copy-end"
        if ignored < len(queued) and not ended:
            raise ProtocolViolation(f"a {queued[ignored].kind} message was pipelined after COPY FROM STDIN: the "
                                    "server takes it for the copy's data, not as a message of its own")
        self._copy_in = not ended
        self._in_segment |= self._copy_in and ignored > 0  # the segment goes on past the Syncs it ignores
        self._expect.clear()
        self._expect.append(head)
        self._expect.extend(queued[ignored + ended:])

    def _command_complete(self, frame: Frame, tag: str, rows: int | None, head: Expect | None,
                          out: list[Command]) -> None:
        statement = head.statement if head is not None else None
        if statement is not None:
            statement.command = tag
            if rows is not None:
                statement.rows = (statement.rows or 0) + rows
            if statement.effects:
                if statement.completed >= len(statement.effects):
                    raise ProtocolViolation(f"the server ran more statements than the enforcer judged in "
                                            f"{redact_literals(statement.text)[:80]!r}")
                for effect in statement.effects[statement.completed]:
                    self.confirmed.apply(effect)
            if tag == "DECLARE CURSOR" and head is not None:
                segment = head.portal.segment if head.portal is not None else head.segment
                self._cursors.declared(statement, segment, self.confirmed.copy())
            statement.completed += 1
        if head is not None and head.kind == "execute":
            self._finish(frame, out)

    def _ready(self, frame: Frame, status: bytes, head: Expect | None, out: list[Command]) -> None:
        self.status = status
        if status != b"I" or not settled(self.confirmed):  # settled: ready() would change nothing
            self.confirmed.ready(status)
        if status == b"I" and head is not None:  # the transaction ended: so did its portals and cursors
            if self._portals:
                for name in [n for n, p in self._portals.items() if p.segment <= head.segment]:
                    del self._portals[name]
            if self._cursors.held:
                self._cursors.transaction_ended(head.segment)
        if self._reported_encoding is not None:
            confirmed = self.confirmed.get("client_encoding") or self.server_encoding
            if canonical(confirmed) != canonical(self._reported_encoding):
                raise ProtocolViolation(f"the server reports client_encoding {self._reported_encoding!r} where the "
                                        f"enforcer expected {confirmed!r}")
            self._reported_encoding = None
        if head is not None and head.kind in ("query", "sync"):
            self._finish(frame, out)

    def _parameter_status(self, body: memoryview) -> None:
        """The server reports a setting it changed: client_encoding is one the enforcer follows,
        and standard_conforming_strings must stay on (docs, 4.1.2.1: with it off, a backslash
        escapes the quote after it, so the enforcer would end a string where the server does not)."""
        name, value = codec.read_parameter_status(body)
        if name.lower() == "standard_conforming_strings" and value.lower() != "on":
            raise ProtocolViolation("the server turned standard_conforming_strings off: a backslash in a string "
                                    "would end it where the enforcer does not")
        if name.lower() == "client_encoding":
            if client_only(value) or canonical(value) is None:
                raise ProtocolViolation(f"the server switched client_encoding to {value!r}, which the enforcer refuses")
            self._reported_encoding = value

    def _row_description(self, frame: Frame, body: memoryview, head: Expect | None,
                         out: list[Command]) -> None:
        if head is None:
            return
        decision = decision_of(head)
        if decision is not None and decision.masks:
            columns = described(body)
            catalog = self.catalog()
            if columns is not self._known_columns or catalog is not self._known_catalog:
                known = catalog.by_oid if isinstance(catalog, Catalog) else {}
                if not any(c.table_oid and c.table_oid not in known for c in columns):
                    self._known_columns, self._known_catalog = columns, catalog
                elif not self._tables_reread:
                    self._awaiting_tables = self._tables_reread = True
                    self._server.stop(frame[1])
                    self._send(out, Side.CLIENT, self._server.take())  # what came before stays before
                    out.append(RefreshCatalog(self._stream, after_ddl=False, for_result=True))
                    return
            self._tables_reread = False
            if head.kind == "query":
                index = head.statement.completed if head.statement else 0
                self._row_mask = self._masks.for_columns(decision, columns, index, catalog, self._codec)
            elif head.prepared is not None:
                head.prepared.columns = columns
            elif head.portal is not None:
                head.portal.columns = columns
        if head.kind == "describe":
            if head.internal:
                self._server.replace(frame[1], frame[2], [])
            self._pop()

    def tables_read(self) -> list[Command]:
        """The catalog was read again for a result naming a table it did not hold (`RefreshCatalog`
        with `for_result`): the result resumes; a table still unknown then withholds it."""
        self._awaiting_tables = False
        return self.from_server(b"")

    def _error(self, frame: Frame, body: memoryview, head: Expect | None, out: list[Command]) -> None:
        self.confirmed.error()
        statement = head.statement if head is not None else None
        replacement = None
        if statement is not None and statement.denied and self._sentinel_bytes in bytes(body):
            decision = statement.decision
            if statement.cancelled:
                statement.error = (f"canceling statement due to user request: it was held for approval by rule "
                                   f"{decision.rule!r} and the request is withdrawn")
                replacement = codec.error_response("57014", statement.error)
            else:
                statement.error = (f"permission denied by interceptor rule {decision.rule!r}: "
                                   f"{decision.reason or 'denied'}")
                replacement = codec.error_response("42501", statement.error)
        else:
            replacement = self._checked_text(b"E", body, head)
            if statement is not None:
                statement.error = codec.read_fields(replacement[5:] if replacement else body).get("M", "error")
        if head is not None and head.kind not in ("query", "sync"):
            if head.change is not None:
                head.change.failed()
            self._finish(frame, out)
            skipped = []
            while self._expect and self._expect[0].kind != "sync":
                skipped.append(self._expect.popleft())  # the server skips these until Sync
            for expect in reversed(skipped):
                if expect.change is not None:
                    expect.change.undo()
            self._row_mask = None
            # No Sync owed: the error is of the segment the client is still sending (a message of
            # it waited for the server); the server discards the rest of it, and so does the session.
            self._doomed |= self._in_segment and not self._expect
        if replacement is not None:
            self._server.replace(frame[1], frame[2], [replacement])

    def _checked_text(self, kind: bytes, body: memoryview, head: Expect | None) -> bytes | None:
        """The frame to send instead of an ErrorResponse or NoticeResponse, None to send it as
        it came. One raised while a statement reads masked values may quote one: its text is
        withheld, naming the rules. Any other has what the
        classifiers find replaced, when `scan_errors` is on."""
        running = head is not None and (head.statement is not None or head.portal is not None)
        decision = decision_of(head) if running else None  # a Describe computes no value
        rules = [spec.rule for spec in decision.masks if spec.columns] if decision is not None else []
        if rules:
            new: bytes | None = withhold_error_text(body, list(dict.fromkeys(rules)))
        else:
            new = scrub_error_text(body) if self.scan_errors else None
        return None if new is None else _frame(kind, new)

    def _finish(self, frame: Frame, out: list[Command]) -> None:
        """Pop the head; if it was a statement, audit it before the frame that ends it."""
        statement = self._pop().statement
        if statement is not None:
            self._send(out, Side.CLIENT, self._server.cut(frame[1]))
            out.append(statement_record(statement, self.database, self.clock(), self._stream))

    def _pop(self) -> Expect:
        head = self._expect.popleft()
        while self._expect and self._expect[0].kind == "copy-end":
            self._expect.popleft()  # the client's CopyDone: no answer of its own
        self._activate()
        return head

    def _activate(self) -> None:
        """Rows stream untouched unless the response now due is an Execute the policy masks."""
        self._row_mask = None
        head = self._expect[0] if self._expect else None
        if head is not None and head.kind == "execute" and head.portal is not None and head.portal.decision.masks:
            self._row_mask = self._masks.for_portal(head.portal, self.catalog(), self._codec)

    # ---- shared ---------------------------------------------------------------------

    def _take_inserts(self) -> list[bytes | memoryview]:
        inserts, self._to_client = self._to_client, []
        return inserts

    def _send(self, out: list[Command], to: Side, pieces: list[bytes | memoryview]) -> None:
        if pieces:
            out.append(Send(to, pieces, self._stream))

    def _fatal(self, out: list[Command], stream: FrameRelay, error: InterceptorError) -> list[Command]:
        """Bad input, or a result that cannot be masked: tell the client why with the error's
        SQLSTATE (at a frame boundary when possible) and close, recording whose fault it was."""
        self.closed = True
        pieces = self._server.cut(self._server.start) if stream is self._server else []
        if self._server.at_boundary():
            pieces = pieces + [codec.error_response(error.sqlstate, str(error), severity="FATAL")]
        self._send(out, Side.CLIENT, pieces)
        out.append(Close(f"{error.fault} fault: {error}", self._stream))
        return out


def _frame(kind: bytes, body: bytes | memoryview) -> bytes:
    return b"".join((kind, codec.INT32.pack(len(body) + 4), body))
