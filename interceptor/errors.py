"""Errors that say whose fault they are, and what the agent is told.

Every failure the enforcer reports to an agent is an InterceptorError whose `fault` says
who has to act (h11's LocalProtocolError / RemoteProtocolError split, widened to the sides
a gateway has), and which carries the answer each protocol gives for it: a PostgreSQL
SQLSTATE (PostgreSQL docs, Appendix A) and an HTTP status (RFC 9110 section 15).
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Fault(enum.StrEnum):
    """Who has to act on a failure."""

    CLIENT = "client"  # the agent sent what its protocol does not allow
    SERVER = "server"  # the upstream could not be reached, refused the enforcer's login, or broke its protocol
    POLICY = "policy"  # the policy (or the resource's options) refuses what the agent asked
    MASKING = "masking"  # a value the policy masks could not be masked safely, so it is withheld
    ENFORCER = "enforcer"  # the enforcer itself cannot do its job (the audit trail is unavailable)


class InterceptorError(Exception):
    """A failure reported to the agent: `fault`, `sqlstate` and `status` say whose it is and
    how each protocol answers it; str() is the message, safe to show the agent."""

    fault: ClassVar[Fault]
    sqlstate: str = "XX000"  # internal_error
    status: int = 500


class ProtocolViolation(InterceptorError, ValueError):
    """Bytes that are not valid protocol; raised by codecs, which do not know whose bytes they
    read. The session reports it as its side's: ClientProtocolError or ServerProtocolError."""

    fault = Fault.CLIENT
    sqlstate = "08P01"  # protocol_violation
    status = 400


class ClientProtocolError(ProtocolViolation):
    """The agent broke the protocol."""


class ServerProtocolError(ProtocolViolation):
    """The upstream server broke the protocol, or did what the enforcer could not follow."""

    fault = Fault.SERVER
    sqlstate = "08006"  # connection_failure
    status = 502


class UpstreamUnavailable(InterceptorError, ConnectionError):
    """The upstream could not be reached (connection refused, timed out, TLS failed)."""

    fault = Fault.SERVER
    sqlstate = "08001"  # sqlclient_unable_to_establish_sqlconnection
    status = 502


class LoginError(InterceptorError, RuntimeError):
    """The upstream refused the enforcer's login with the resource's credentials."""

    fault = Fault.SERVER
    sqlstate = "08004"  # sqlserver_rejected_establishment_of_sqlconnection
    status = 502


class Refused(InterceptorError):
    """The policy or the resource's options refuse the session or the request, with the
    SQLSTATE that says why (42501 insufficient_privilege by default)."""

    fault = Fault.POLICY
    status = 403

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class MaskingError(InterceptorError, ValueError):
    """A value cannot be masked safely; the agent gets this error, never the value."""

    fault = Fault.MASKING
    sqlstate = "42501"  # insufficient_privilege: the agent may not see the value
    status = 502


class AuditUnavailable(InterceptorError, RuntimeError):
    """A record could not be made durable; the operation it records is denied."""

    fault = Fault.ENFORCER
    sqlstate = "58000"  # system_error
    status = 503
