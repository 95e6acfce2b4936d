"""HTTP/1.1 through the runtime: a sans-IO session between the agent and an upstream the
handler has already connected, with h11 (0.16) as the codec on each side.

Theory of operation. One request is in flight at a time (an `_Exchange`): its head is
checked byte by byte (`headers.read_head`, `target.parse_target`) before an h11 server
connection, fresh for each request, reads it; what the agent sends after the head goes to
that connection until its request ends, and after that is kept (a pipelined request, or
bytes sent early after an upgrade request) until the response has ended. The request is
judged at its head, or once the first `Dialect.body_limit` bytes of its body are read;
then it is refused (the dialect's refusal), held for approval, or forwarded through one
h11 client connection to the upstream, which re-frames its body. The response streams
back through the request's h11 server connection, through the dialect's body filter when
it gives one (then without Content-Length: chunked, or close-delimited for HTTP/1.0).
A 101 answer to a WebSocket or SPDY upgrade turns the flow into a byte relay.

Streams: 0 carries what goes to the upstream, and holds (the agent's input: a held request
stops reading the agent); 1 carries what goes to the agent, the audit records and the
close (the upstream's input). So the agent's bytes leave in the order they were made, and
a request's record comes before the last bytes of its response (strict audit).

Records: one per request (kind "request"), when its response ends, when it is refused, or
when the flow ends first (`ended`, `abandoned`, `unrecorded`).
"""

from __future__ import annotations

import http
from dataclasses import dataclass, field

import h11

from interceptor.decision import Decision, Judge, Verdict
from interceptor.errors import ClientProtocolError, Fault, InterceptorError, MaskingError
from interceptor.handlers.commands import Close, Command, Hold, HoldOutcome, Record, Send, Shutdown, Side, StreamId
from interceptor.handlers.http.dialect import BodyFilter, Dialect, Reply, RequestHead, ResponseHead
from interceptor.handlers.http.headers import (
    MAX_HEAD, Head, HeadError, connection_tokens, forwarded_request, forwarded_response, head_end, read_head,
    upgrade_protocol,
)
from interceptor.handlers.http.target import Target, parse_target, same_host
from interceptor.operations import Operation, Pairs

UP: StreamId = 0  # what goes to the upstream; the agent's input
DOWN: StreamId = 1  # what goes to the agent, records and the close; the upstream's input
DONE = "the HTTP connection ended"  # the reason of every normal Close
PROTOCOL_RULE = "http-protocol"  # the rule of a record for a request refused before it was an operation
MAX_EARLY = 64 * 1024  # bytes an agent may send after an upgrade request before the 101
MAX_PIPELINED = 1024 * 1024  # bytes of further requests kept while a response streams
AUDIT_TARGET = 256  # characters of a target a record keeps for a request that never became an operation
_BODILESS = (204, 304)
_RANGES = ("range", "if-range")  # not sent for a masked request: a masker needs the whole body


@dataclass(slots=True)
class _Exchange:
    """One request and its response, as far as they went."""

    head: RequestHead
    parsed: Head
    target: Target
    agent: h11.Connection  # the agent's side: reads this request, writes its response
    upgrade: str | None  # the protocol the request may switch to
    phase: str = "body"  # body (read for judging) | held | forward | done
    limit: int = 0  # body bytes read before judging
    body: bytearray = field(default_factory=bytearray)
    body_done: bool = False  # the agent's request ended
    operation: Operation | None = None
    decision: Decision | None = None
    approval: dict[str, object] | None = None
    filter: BodyFilter | None = None
    responded: bool = False  # the response head went to the agent
    status: int | None = None  # the status the agent got
    close_after: bool = False  # the connection ends with this response
    failure: str | None = None  # why it ends the flow as an error
    fault: Fault | None = None  # whose fault that is
    bytes_up: int = 0  # request body bytes sent upstream
    bytes_down: int = 0  # response body bytes sent to the agent
    relayed: list[int] = field(default_factory=lambda: [0, 0])  # after an upgrade: bytes up, bytes down
    recorded: bool = False


class HttpSession:
    """The sans-IO HTTP/1.1 session of one flow (interceptor.handlers.commands.Session).

    `server_name`: the SNI the agent sent (None: cleartext or none), which the Host must
    name (else 421); `credential_headers`: added to every request upstream (after the
    agent's credential and identity headers are dropped); `upstream_authority`: the Host
    sent upstream (None: the agent's).

    Once the flow ended early: `error` says why, `fault` whose fault it is, and `cut_short`
    whether it ended mid-exchange without a whole answer (a response cut short, an agent
    sending too much while its answer was due): the handler resets the agent's connection
    then, so that a close-delimited body cannot look complete; otherwise every answer went
    out whole and the connection closes gracefully."""

    def __init__(self, dialect: Dialect, judge: Judge, *, server_name: str | None,
                 credential_headers: Pairs = (), upstream_authority: str | None = None) -> None:
        self.dialect = dialect
        self.judge = judge
        self.server_name = server_name
        self.credential_headers = credential_headers
        self.upstream_authority = upstream_authority
        self._credential_names = frozenset(name.lower().replace("_", "-") for name, _ in credential_headers)
        self.error: str | None = None  # why the flow ended early, if it did
        self.fault: Fault | None = None
        self.cut_short = False
        self._upstream = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self._exchange: _Exchange | None = None
        self._pending = bytearray()  # the agent's bytes not yet given to an h11 connection
        self._scanned = 0  # how much of _pending head_end has checked
        self._ended: set[Side] = set()
        self._relay = False  # upgraded: bytes pass as they are
        self._closed = False

    # ---- the Session protocol ---------------------------------------------------------

    def start(self) -> list[Command]:
        """The first commands: none (the handler connected the upstream)."""
        return []

    def input_stream(self, side: Side) -> StreamId | None:
        return UP if side is Side.CLIENT else DOWN

    def receive(self, side: Side, data: bytes) -> list[Command]:
        if self._closed:
            return []
        if self._relay:
            return self._relayed(side, data)
        if side is Side.SERVER:
            return self._from_upstream(data)
        exchange = self._exchange
        if exchange is not None and not exchange.body_done:
            exchange.agent.receive_data(data)
            return [] if exchange.phase == "held" else self._request_events(exchange) + self._next()
        self._pending += data
        if exchange is None:
            return self._next()
        return self._kept(exchange)

    def ended(self, side: Side) -> list[Command]:
        self._ended.add(side)
        if self._closed:
            return []
        if self._relay:
            if len(self._ended) == 2:
                return self._close(DONE)
            return [Shutdown(side.other, stream=UP if side is Side.CLIENT else DOWN)]
        if side is Side.SERVER:
            return self._upstream_ended()
        exchange = self._exchange
        if exchange is None:
            return self._close(DONE)
        if not exchange.body_done and exchange.phase != "held":
            exchange.agent.receive_data(b"")
            return self._request_events(exchange)
        if exchange.phase == "forward":  # as Go's servers do: an agent gone cancels its request (a watch)
            return self.unrecorded("the client closed the connection before the response ended") + self._close(DONE)
        return []

    def opened(self, stream: StreamId, error: str | None) -> list[Command]:
        return [] if error is None else self._close(error, Fault.SERVER)

    def waiting(self, stream: StreamId, request_id: str | None, timeout_seconds: int) -> list[Command]:
        """HTTP cannot tell the agent mid-request; it waits for the answer."""
        return []

    def approval(self, stream: StreamId, outcome: HoldOutcome) -> list[Command]:
        exchange = self._exchange
        if exchange is None or exchange.phase != "held" or exchange.decision is None:
            raise RuntimeError("approval() without a held request")
        approved = outcome.approved and not outcome.cancelled
        exchange.approval = {"approved": approved, "request_id": outcome.request_id, "approver": outcome.approver,
                             "reason": outcome.reason, **({"cancelled": True} if outcome.cancelled else {})}
        if approved:
            return self._forward(exchange) + self._next()
        decision = exchange.decision
        reason = outcome.reason or "not approved"
        exchange.decision = Decision(Verdict.DENY, decision.rule, reason, (), decision.approval, decision.details,
                                     decision.shadow)
        return self._refuse(exchange, 403, f"request not approved (rule {decision.rule!r}): {reason}",
                            decision.rule) + self._next()

    def abandoned(self, stream: StreamId, request_id: str | None, reason: str) -> Record | None:
        """The record of the held request when the flow ends before a decision: denied with
        `reason`, never run. None when nothing is held."""
        exchange = self._exchange
        if exchange is None or exchange.phase != "held" or exchange.decision is None or exchange.recorded:
            return None
        exchange.phase = "done"
        decision = exchange.decision
        exchange.decision = Decision(Verdict.DENY, decision.rule, reason, (), decision.approval, decision.details,
                                     decision.shadow)
        exchange.approval = {"approved": False, "request_id": request_id, "reason": reason, "withdrawn": True}
        return self._record(exchange, None, reason)

    def unrecorded(self, reason: str | None) -> list[Record]:
        """The record of the request in flight when the flow ended without the session
        hearing it (the handler's own end: a timeout, a write error), with `reason` as its
        error (a held one as `abandoned` records it); empty when every request is recorded.
        After an upgrade, the relay's record."""
        exchange = self._exchange
        if exchange is None or exchange.recorded:
            return []
        if exchange.phase == "held":
            abandoned = self.abandoned(UP, None, reason or DONE)
            return [abandoned] if abandoned is not None else []
        return [self._record(exchange, exchange.status, reason)]

    # ---- the agent's requests -----------------------------------------------------------

    def _next(self) -> list[Command]:
        """Start the requests whose heads are complete, while none is in flight."""
        out: list[Command] = []
        while self._exchange is None and not self._closed:
            try:
                size = head_end(self._pending, self._scanned)
            except HeadError as exc:
                return out + self._bad_head(bytes(self._pending), exc)
            if size == 0:
                self._scanned = len(self._pending)
                if self._ended:
                    out += self._close(DONE)
                return out
            raw = bytes(self._pending[:size])
            del self._pending[:size]
            self._scanned = 0
            out += self._begin(raw)
        return out

    def _begin(self, raw: bytes) -> list[Command]:
        """Read the head `raw` and start its exchange."""
        try:
            parsed = read_head(raw)
            target = parse_target(parsed.method, parsed.target)
            head = self._request_head(parsed, target)
        except ClientProtocolError as exc:
            return self._bad_head(raw, exc)
        agent = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        agent.receive_data(raw)
        try:
            request = agent.next_event()
        except h11.RemoteProtocolError as exc:
            return self._bad_head(raw, ClientProtocolError(f"malformed request head: {exc}"))
        if not isinstance(request, h11.Request):
            raise RuntimeError(f"h11 read {request!r} from a complete request head")
        exchange = self._exchange = _Exchange(head, parsed, target, agent, upgrade_protocol(parsed.headers))
        exchange.close_after = parsed.http_version == "1.0" or "close" in connection_tokens(parsed.headers)
        if self._pending:
            agent.receive_data(bytes(self._pending))
            self._pending.clear()
        has_body = parsed.chunked or bool(parsed.content_length)
        if not has_body:
            exchange.body_done = isinstance(agent.next_event(), h11.EndOfMessage)
            self._pending += agent.trailing_data[0]
        exchange.limit = self.dialect.body_limit(head)
        if exchange.limit <= 0 or not has_body:
            return self._judge(exchange)
        if parsed.content_length is not None and parsed.content_length > exchange.limit:
            return self._refuse(exchange, 413, f"the request body is larger than the {exchange.limit} bytes "
                                               "the enforcer reads to judge it", None)
        return self._continue(exchange) + self._request_events(exchange)

    def _request_head(self, parsed: Head, target: Target) -> RequestHead:
        """The RequestHead of a checked head: its Host agrees with the absolute-form's
        authority (else 400) and with the SNI (else 421)."""
        hosts = [value for key, value in parsed.headers if key == "host" and value]
        host = target.authority or (hosts[0] if hosts else None)
        if target.authority is not None and hosts and not same_host(hosts[0], target.authority):
            raise ClientProtocolError(f"the target's authority {target.authority!r} and Host {hosts[0]!r} differ")
        if self.server_name is not None and host is not None and not same_host(host, self.server_name):
            raise HeadError(f"Host {host!r} is not the TLS server name {self.server_name!r}", 421)
        if host is None and self.upstream_authority is None and self.server_name is None:
            raise ClientProtocolError("the request names no host (no Host header)")
        return RequestHead(parsed.method, parsed.target, target.path, target.query, parsed.headers, host,
                           parsed.http_version)

    def _request_events(self, exchange: _Exchange) -> list[Command]:
        """Read what the agent's h11 connection holds of the request body: collect it for
        judging, or forward it."""
        out: list[Command] = []
        while not exchange.body_done and exchange.phase in ("body", "forward") and not self._closed:
            try:
                event = exchange.agent.next_event()
            except h11.RemoteProtocolError as exc:
                return out + self._client_broke(exchange, f"malformed request body: {exc}")
            if isinstance(event, h11.Data):
                out += self._body(exchange, bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):  # trailers are dropped: h11 re-frames the body
                exchange.body_done = True
                self._pending[:0] = exchange.agent.trailing_data[0]
                if exchange.phase == "body":
                    out += self._judge(exchange)
                else:
                    out += self._to_upstream(h11.EndOfMessage()) + self._kept(exchange)
            else:  # NEED_DATA (h11 raises when the agent ended before the body did)
                break
        return out

    def _body(self, exchange: _Exchange, data: bytes) -> list[Command]:
        if exchange.phase == "forward":
            exchange.bytes_up += len(data)
            return self._to_upstream(h11.Data(data=data))
        exchange.body += data
        if len(exchange.body) > exchange.limit:
            exchange.close_after = True
            return self._refuse(exchange, 413, f"the request body is larger than the {exchange.limit} bytes "
                                               "the enforcer reads to judge it", None)
        return []

    def _continue(self, exchange: _Exchange) -> list[Command]:
        """`100 Continue` to an agent that waits for it (Expect: 100-continue is never
        forwarded: the enforcer answers it when it wants the body). RFC 9110 section 10.1.1."""
        if not exchange.agent.they_are_waiting_for_100_continue:
            return []
        continue_ = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
        return [Send(Side.CLIENT, [exchange.agent.send(continue_)], stream=DOWN)]

    def _kept(self, exchange: _Exchange) -> list[Command]:
        """The agent sent more after its request while the response is due: keep it, within
        bounds (an upgrade's early bytes, or further requests)."""
        limit, what = (MAX_EARLY, "bytes after an upgrade request before its answer") if exchange.upgrade \
            else (MAX_PIPELINED, "bytes of further requests while a response is due")
        if len(self._pending) > limit:
            return self._abort(f"the client sent more than {limit} {what}", Fault.CLIENT)
        return []

    # ---- judging ------------------------------------------------------------------------

    def _judge(self, exchange: _Exchange) -> list[Command]:
        body = bytes(exchange.body)
        try:
            operation = exchange.operation = self.dialect.operation(exchange.head, body)
        except InterceptorError as exc:
            exchange.close_after = exchange.close_after or not exchange.body_done
            return self._refuse(exchange, exc.status, str(exc), PROTOCOL_RULE)
        try:
            decision = self.judge.decide(operation)
        except Exception as exc:  # noqa: BLE001 - a policy failure denies, it does not end the flow
            decision = Decision.deny("policy-error", f"policy evaluation failed: {exc}")
        exchange.decision = decision
        if decision.verdict is Verdict.APPROVE:
            exchange.phase = "held"
            return [Hold(operation, decision, stream=UP)]
        if decision.verdict is Verdict.DENY:
            return self._refuse(exchange, 403, f"permission denied by interceptor rule {decision.rule!r}: "
                                               f"{decision.reason}", decision.rule)
        return self._forward(exchange)

    def _forward(self, exchange: _Exchange) -> list[Command]:
        """Send the judged request upstream: its head, the body read so far, and what follows."""
        if exchange.operation is None:
            raise RuntimeError("forwarding a request that was never judged")
        exchange.phase = "forward"
        if Side.SERVER in self._ended:
            return self._server_broke(exchange, "the upstream closed the connection before the request was sent")
        try:
            out = self._to_upstream(h11.Request(method=exchange.head.method, target=exchange.target.origin,
                                                headers=_wire(self._upstream_headers(exchange, exchange.operation))))
        except (h11.LocalProtocolError, UnicodeEncodeError) as exc:
            return self._server_broke(exchange, f"the request cannot be sent upstream: {exc}")
        if exchange.body:
            exchange.bytes_up += len(exchange.body)
            out += self._to_upstream(h11.Data(data=bytes(exchange.body)))
        if exchange.body_done:
            return out + self._to_upstream(h11.EndOfMessage()) + self._kept(exchange)
        return out + self._continue(exchange) + self._request_events(exchange)

    def _upstream_headers(self, exchange: _Exchange, operation: Operation) -> list[tuple[str, str]]:
        """The dialect's headers (from the agent's, without hop-by-hop, credential and
        identity headers, nor any named as the resource's credential headers are, and
        without Range when the decision masks), the resource's
        credential, Host, Accept-Encoding: identity (so a filter reads the body), the body's
        framing and the upgrade. RFC 9110 sections 7.6.1 and 14.2."""
        head = exchange.head
        credentials = self._credential_names
        cleaned = RequestHead(head.method, head.target, head.path, head.query,
                              forwarded_request(head.headers, credentials), head.host, head.http_version)
        dropped = _RANGES if exchange.decision is not None and exchange.decision.masks else ()
        kept = [(key, value) for key, value in forwarded_request(self.dialect.request_headers(cleaned, operation),
                                                                 credentials)
                if key not in ("host", "accept-encoding") and key not in dropped]
        host = self.upstream_authority or head.host or self.server_name
        headers = [("host", host or ""), *kept, *self.credential_headers, ("accept-encoding", "identity")]
        if exchange.parsed.chunked:
            headers.append(("transfer-encoding", "chunked"))
        elif exchange.parsed.content_length is not None:
            headers.append(("content-length", str(exchange.parsed.content_length)))
        if exchange.upgrade is not None:
            headers += [("connection", "upgrade"), ("upgrade", head.header("upgrade") or exchange.upgrade)]
        return headers

    def _to_upstream(self, event: h11.Request | h11.Data | h11.EndOfMessage) -> list[Command]:
        data = self._upstream.send_with_data_passthrough(event)
        return [Send(Side.SERVER, data, stream=UP)] if data else []

    # ---- the upstream's responses -------------------------------------------------------

    def _from_upstream(self, data: bytes) -> list[Command]:
        exchange = self._exchange
        unexpected = "the upstream sent bytes while no request was outstanding"
        if exchange is None or exchange.phase == "held":  # a held request is the driver's to settle
            return self._close(unexpected, Fault.SERVER)
        if exchange.phase != "forward":
            return self._server_broke(exchange, unexpected)
        self._upstream.receive_data(data)
        return self._response_events(exchange) + self._next()

    def _upstream_ended(self) -> list[Command]:
        exchange = self._exchange
        if exchange is None or exchange.phase != "forward":
            return self._close(DONE) if exchange is None or exchange.phase == "done" else []
        self._upstream.receive_data(b"")
        out = self._response_events(exchange)
        if self._exchange is exchange and not exchange.recorded:
            out += self._server_broke(exchange, "the upstream closed the connection before its response ended")
        return out + self._next()

    def _response_events(self, exchange: _Exchange) -> list[Command]:
        out: list[Command] = []
        while self._exchange is exchange and not self._closed and not self._relay:
            try:
                event = self._upstream.next_event()
                if isinstance(event, h11.InformationalResponse):
                    out += self._informational(exchange, event)
                elif isinstance(event, h11.Response):
                    out += self._response(exchange, event)
                elif isinstance(event, h11.Data):
                    out += self._response_body(exchange, bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    out += self._response_end(exchange)
                else:
                    break
            except h11.RemoteProtocolError as exc:
                return out + self._server_broke(exchange, f"the upstream broke HTTP/1.1: {exc}")
            except h11.LocalProtocolError as exc:
                return out + self._server_broke(exchange, f"the upstream's response cannot be relayed: {exc}")
        return out

    def _informational(self, exchange: _Exchange, event: h11.InformationalResponse) -> list[Command]:
        """A 1xx: 101 switches an upgrade request to a relay; 100 is the enforcer's to send
        (Expect is never forwarded); the others go to an HTTP/1.1 agent (RFC 9110 15.2)."""
        if event.status_code == 101:
            return self._upgraded(exchange, event)
        if event.status_code == 100 or exchange.head.http_version == "1.0":
            return []
        headers = forwarded_response(_pairs(event.headers), keep_length=False)
        return [Send(Side.CLIENT, [exchange.agent.send(h11.InformationalResponse(
            status_code=event.status_code, headers=_wire(headers), reason=event.reason))], stream=DOWN)]

    def _upgraded(self, exchange: _Exchange, event: h11.InformationalResponse) -> list[Command]:
        """101 Switching Protocols to the protocol asked for: the agent gets it, then both
        ways relay bytes: first the agent's early bytes upstream and the upstream's bytes
        after its 101 to the agent. A decision whose masks the dialect would apply to this
        answer (it gives a filter, or refuses) cannot be kept on a raw stream: 502."""
        response = ResponseHead(101, _pairs(event.headers), event.reason.decode("latin-1"))
        switched = (response.header("upgrade") or "").strip().lower()
        if switched != exchange.upgrade:
            return self._server_broke(exchange, f"the upstream switched to {switched!r}, "
                                                f"not the {exchange.upgrade!r} asked for")
        if exchange.operation is None or exchange.decision is None:
            raise RuntimeError("an upgrade of a request that was never judged")
        try:
            if self.dialect.response_filter(exchange.head, exchange.operation, exchange.decision, response):
                raise MaskingError(f"rule(s) of {exchange.decision.rule!r} mask this response, but it switches to "
                                   f"{switched}, a stream no mask applies to; withheld")
        except MaskingError as exc:
            exchange.close_after = True
            return self._refuse(exchange, exc.status, str(exc), exchange.decision.rule)
        headers = [*forwarded_response(response.headers, keep_length=False),
                   ("connection", "upgrade"), ("upgrade", response.header("upgrade") or switched)]
        exchange.responded = True
        exchange.status = 101
        self._relay = True
        out: list[Command] = [Send(Side.CLIENT, [exchange.agent.send(h11.InformationalResponse(
            status_code=101, headers=_wire(headers), reason=event.reason))], stream=DOWN)]
        early, after = bytes(self._pending), self._upstream.trailing_data[0]
        self._pending.clear()
        if early:
            out += self._relayed(Side.CLIENT, early)
        if after:
            out += self._relayed(Side.SERVER, after)
        return out

    def _response(self, exchange: _Exchange, event: h11.Response) -> list[Command]:
        response = ResponseHead(event.status_code, _pairs(event.headers), event.reason.decode("latin-1"))
        if exchange.operation is None or exchange.decision is None:
            raise RuntimeError("a response to a request that was never judged")
        bodiless = exchange.head.method == "HEAD" or response.status in _BODILESS
        if not bodiless:
            try:
                exchange.filter = self.dialect.response_filter(exchange.head, exchange.operation, exchange.decision,
                                                               response)
            except InterceptorError as exc:
                exchange.close_after = True
                return self._refuse(exchange, exc.status, str(exc), exchange.decision.rule)
            if exchange.filter is not None and (response.status == 206 or response.header("content-range")):
                exchange.close_after = True  # a slice of a body holds values without what says to mask them
                error = MaskingError("a partial response (206, Content-Range) cannot be masked")
                return self._refuse(exchange, error.status, str(error), exchange.decision.rule)
        if exchange.upgrade is not None or "close" in connection_tokens(response.headers) \
                or event.http_version < b"1.1":
            exchange.close_after = True  # an upgrade answered otherwise, or an upstream that closes
        keep_length = exchange.filter is None and response.header("transfer-encoding") is None
        headers = list(forwarded_response(response.headers, keep_length=keep_length,
                                              filtered=exchange.filter is not None))
        if exchange.close_after:
            headers.append(("connection", "close"))
        exchange.responded = True
        exchange.status = response.status
        return [Send(Side.CLIENT, [exchange.agent.send(h11.Response(
            status_code=response.status, headers=_wire(headers), reason=event.reason))], stream=DOWN)]

    def _response_body(self, exchange: _Exchange, data: bytes) -> list[Command]:
        if exchange.filter is not None:
            try:
                data = exchange.filter.feed(data)
            except MaskingError as exc:
                return self._abort(f"masking failed, the response is cut short: {exc}", Fault.MASKING)
        return self._to_agent(exchange, data)

    def _to_agent(self, exchange: _Exchange, data: bytes) -> list[Command]:
        if not data:
            return []
        exchange.bytes_down += len(data)
        pieces = exchange.agent.send_with_data_passthrough(h11.Data(data=data))
        return [Send(Side.CLIENT, pieces or [], stream=DOWN)]

    def _response_end(self, exchange: _Exchange) -> list[Command]:
        """The response ended: its record, then the rest of its body and its end; then the
        next request, or the close."""
        last: list[bytes] = []
        if exchange.filter is not None:
            try:
                last = [exchange.filter.end()]
            except MaskingError as exc:
                return self._abort(f"masking failed, the response is cut short: {exc}", Fault.MASKING)
        tail = [piece for data in last if data for piece in (
            exchange.agent.send_with_data_passthrough(h11.Data(data=data)) or [])]
        exchange.bytes_down += sum(len(data) for data in last)
        tail = [piece for piece in (*tail, exchange.agent.send(h11.EndOfMessage())) if piece]
        out: list[Command] = [self._record(exchange, exchange.status, None)]
        if tail:
            out.append(Send(Side.CLIENT, tail, stream=DOWN))
        return out + self._done(exchange)

    def _done(self, exchange: _Exchange) -> list[Command]:
        """The exchange is over (answered whole): the next request, or the close."""
        exchange.phase = "done"
        if exchange.failure is not None:
            return self._close(exchange.failure, exchange.fault)
        if exchange.close_after or not exchange.body_done or self._ended or not self._reusable():
            return self._close(DONE)
        if self._upstream.our_state is h11.DONE and self._upstream.their_state is h11.DONE:
            self._upstream.start_next_cycle()
        self._exchange = None
        return []

    def _reusable(self) -> bool:
        """Whether the upstream connection can carry the next request."""
        states = (self._upstream.our_state, self._upstream.their_state)
        leftover = self._upstream.trailing_data[0]  # bytes after the response: never taken as the next one's
        return states in ((h11.DONE, h11.DONE), (h11.IDLE, h11.IDLE)) and not leftover

    # ---- the relay after an upgrade -----------------------------------------------------

    def _relayed(self, side: Side, data: bytes) -> list[Command]:
        exchange = self._exchange
        if exchange is not None:
            exchange.relayed[0 if side is Side.CLIENT else 1] += len(data)
        return [Send(side.other, [data], stream=UP if side is Side.CLIENT else DOWN)]

    # ---- refusals, failures, records ----------------------------------------------------

    def _refuse(self, exchange: _Exchange, status: int, message: str, rule: str | None) -> list[Command]:
        """Deny the request (unless it is denied already) and answer it with `status`."""
        if exchange.decision is None or exchange.decision.verdict is not Verdict.DENY:
            exchange.decision = Decision.deny(rule or PROTOCOL_RULE, message)
        return self._answer(exchange, status, message, rule)

    def _answer(self, exchange: _Exchange, status: int, message: str, rule: str | None) -> list[Command]:
        """Answer the request with the dialect's refusal and record it; the connection goes
        on when the request was read whole and nothing says close."""
        reply = self.dialect.refusal(exchange.head, bytes(exchange.body), status, message, rule)
        exchange.phase = "done"
        exchange.responded = True
        exchange.status = status
        close = exchange.close_after or not exchange.body_done or exchange.failure is not None
        data = reply_bytes(reply, exchange.head.method, close)
        out: list[Command] = [self._record(exchange, status, message), Send(Side.CLIENT, [data], stream=DOWN)]
        return out + self._done(exchange)

    def _bad_head(self, raw: bytes, error: ClientProtocolError) -> list[Command]:
        """A request that never became an operation: answered, recorded under PROTOCOL_RULE,
        and the connection closed."""
        status = getattr(error, "status", 400)
        line = raw.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode("latin-1")
        method, _, rest = line.partition(" ")
        target = rest.rpartition(" ")[0] if " " in rest else rest
        head = RequestHead(method[:AUDIT_TARGET], target[:AUDIT_TARGET], "", (), (), None)
        reply = self.dialect.refusal(head, b"", status, str(error), None)
        record = Record(Decision.deny(PROTOCOL_RULE, str(error)),
                        {"method": method[:AUDIT_TARGET], "target": target[:AUDIT_TARGET]},
                        {"status": status, "error": str(error)}, kind="request", stream=DOWN)
        out: list[Command] = [record, Send(Side.CLIENT, [reply_bytes(reply, method, True)], stream=DOWN)]
        return out + self._close(f"bad request: {error}", Fault.CLIENT)

    def _client_broke(self, exchange: _Exchange, reason: str) -> list[Command]:
        """The agent broke its request (a bad chunk, the end mid-body): 400 if nothing of the
        response went out yet, and the close; nothing more goes upstream."""
        exchange.failure, exchange.fault = reason, Fault.CLIENT
        if exchange.responded:
            return self._abort(reason, Fault.CLIENT)
        return self._refuse(exchange, 400, reason, None)

    def _server_broke(self, exchange: _Exchange, reason: str) -> list[Command]:
        """The upstream broke its response: 502 if nothing of it went out yet, and the close."""
        exchange.failure, exchange.fault = reason, Fault.SERVER
        if exchange.responded:
            return self._abort(reason, Fault.SERVER)
        return self._answer(exchange, 502, reason, None)

    def _abort(self, reason: str, fault: Fault) -> list[Command]:
        """End the flow now, a response cut short (fail closed); the request recorded."""
        self.cut_short = True
        return self._close(reason, fault)

    def _close(self, reason: str, fault: Fault | None = None) -> list[Command]:
        """Close the flow, after the record of a request in flight (a held one is the
        driver's to settle: `abandoned`); `fault` None for a normal end."""
        if self._closed:
            return []
        self._closed = True
        if fault is not None:
            self.error, self.fault = reason, fault
        exchange = self._exchange
        held = exchange is not None and exchange.phase == "held"
        out: list[Command] = [] if held else list(self.unrecorded(None if fault is None else reason))
        return out + [Close(reason, stream=DOWN)]

    def _record(self, exchange: _Exchange, status: int | None, error: str | None) -> Record:
        exchange.recorded = True
        head = exchange.head
        if exchange.operation is None:  # refused before it was an operation
            operation: dict[str, object] = {"method": head.method, "target": exchange.target.origin[:AUDIT_TARGET]}
        else:  # the HTTP method beside an operation's own (an MCP call's JSON-RPC method)
            operation = {**self.dialect.audit_operation(exchange.operation), "target": exchange.target.origin}
            if operation.setdefault("method", head.method) != head.method:
                operation["http_method"] = head.method
        outcome: dict[str, object] = {"status": status, "bytes_up": exchange.bytes_up,
                                      "bytes_down": exchange.bytes_down,
                                      "masked": exchange.filter.masked if exchange.filter is not None else 0,
                                      "error": error}
        if exchange.approval is not None:
            outcome["approval"] = exchange.approval
        if exchange.upgrade is not None and self._relay:
            outcome["upgrade"] = {"protocol": exchange.upgrade, "bytes_up": exchange.relayed[0],
                                  "bytes_down": exchange.relayed[1]}
        decision = exchange.decision or Decision.deny(PROTOCOL_RULE, error or "not judged")
        return Record(decision, operation, outcome, kind="request", stream=DOWN)


def reply_bytes(reply: Reply, method: str, close: bool) -> bytes:
    """`reply` as an HTTP/1.1 response: its own Content-Length, `Connection: close` when
    `close`, no body for HEAD (RFC 9110 section 9.3.2). Raises ValueError for a header
    the dialect built with CR, LF or NUL in it."""
    try:
        phrase = http.HTTPStatus(reply.status).phrase
    except ValueError:
        phrase = ""
    lines = [f"HTTP/1.1 {reply.status} {phrase}"]
    for name, value in reply.headers:
        if name.lower() in ("content-length", "transfer-encoding", "connection"):
            continue
        if any(char in name + value for char in "\r\n\0"):
            raise ValueError(f"the refusal's header {name!r} holds CR, LF or NUL")
        lines.append(f"{name}: {value}")
    lines.append(f"content-length: {len(reply.body)}")
    if close:
        lines.append("connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if method == "HEAD" else head + reply.body


def _wire(headers: Pairs | list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Headers as h11 sends them: Latin-1 bytes (RFC 9110 section 5.5: obs-text passes as
    it came). Raises UnicodeEncodeError for a character Latin-1 cannot carry."""
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def _pairs(headers: h11._headers.Headers) -> Pairs:
    return tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in headers)
