"""asyncio glue of the ssh handler: the agent's SSH connection served by asyncssh with a host
certificate of the SSH host CA (principals: the resource's host names, its `host_names`
option and the original destination address), the server connection made once the agent
has completed its key exchange and asks to log in (interceptor.handlers.ssh.upstream; the
agent's whole handshake and login are bounded by LOGIN_SECONDS), channels served until
either side ends, and one
connection record: the user the agent gave, channels opened (and refused past the limit),
environment variables and channel requests refused, remote forwards refused past their
limit (AgentConnection.summary), bytes each way (channel payload), the error and whose
fault it was.

Bad input from the agent (a malformed packet, a version banner flood, a packet past the
256 KiB asyncssh takes) ends that flow only: asyncssh disconnects it and the record says why.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import asyncssh
from asyncssh.packet import PacketDecodeError

from interceptor.errors import Fault, InterceptorError, Refused
from interceptor.flow import FlowContext
from interceptor.handlers.base import FlowEnd, Services
from interceptor.handlers.ssh import upstream
from interceptor.handlers.ssh.connection import AgentConnection
from interceptor.ssh_certificates import resource_names

log = logging.getLogger(__name__)

LOGIN_SECONDS = 60.0  # the agent's handshake and login
AGENT_FAULTS = (asyncssh.ProtocolError, asyncssh.ProtocolNotSupported, asyncssh.KeyExchangeFailed,
                asyncssh.MACError, asyncssh.CompressionError, asyncssh.IllegalUserName, PacketDecodeError)


class HostCaUnavailable(InterceptorError):
    """The daemon has no SSH host CA to present a host certificate with."""

    fault = Fault.ENFORCER
    status = 503


def host_key(flow: FlowContext, services: Services) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
    """The host key and certificate to present: valid for the resource's host names, its
    `host_names` option and the flow's original destination address. HostCaUnavailable
    without an SSH host CA; Refused when the resource's names cannot be certified."""
    if services.ssh_host_ca is None:
        raise HostCaUnavailable("the daemon has no SSH host CA (see `interceptor doctor`); connection closed")
    try:
        return services.ssh_host_ca.server_host_key([*resource_names(services.resource), str(flow.original_dst.ip)])
    except ValueError as exc:
        raise Refused("42501", f"no host certificate can be made for this resource: {exc}") from None


class SshHandler:
    """The Handler of protocol `ssh`; `sftp_factory` serves the agent's SFTP subsystem, and
    legacy scp execs once judged (interceptor.handlers.ssh.process)."""

    protocol = "ssh"

    def __init__(self, sftp_factory: asyncssh.SFTPServerFactory | None = None) -> None:
        self.sftp_factory = sftp_factory

    async def serve(self, flow: FlowContext, client: socket.socket, services: Services) -> None:
        end = FlowEnd()
        owner: AgentConnection | None = None
        client.setblocking(False)
        try:
            key = host_key(flow, services)
            owner = AgentConnection(flow, services, lambda: upstream.connect(flow, services), self.sftp_factory)
            await self._run(owner, client, key)
        except InterceptorError as exc:
            end.failed(exc)
        except (asyncssh.DisconnectError, PacketDecodeError) as exc:
            _agent_lost(end, exc)
        except (ConnectionError, OSError, TimeoutError, asyncssh.Error) as exc:
            end.error = f"agent connection: {type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a bug ends this flow, recorded; the daemon goes on
            log.exception("flow %s of agent %s failed", flow.flow_id, flow.agent)
            end.error, end.fault = f"internal error: {type(exc).__name__}: {exc}", Fault.ENFORCER
        finally:
            if owner is not None:
                await owner.close()
            if owner is not None and owner.upstream is not None:
                await _close_server(owner.upstream, end)
            client.close()
        if owner is not None and owner.lost is not None and end.error is None:
            _agent_lost(end, owner.lost)
        if owner is not None:
            end.details.update(owner.summary())
        await end.record(flow, services, self.protocol, outcome=end.details)

    async def _run(self, owner: AgentConnection, client: socket.socket,
                   host_key: tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]) -> None:
        """Serve the agent's connection until it ends, or until the server's does (the agent
        is then disconnected, told why)."""
        try:
            agent = await asyncssh.run_server(
                client, server_factory=lambda: owner, server_host_keys=[host_key], agent_forwarding=False,
                x11_forwarding=False, allow_scp=False, login_timeout=LOGIN_SECONDS, keepalive_interval=0)
        except asyncssh.Error:
            server = owner.upstream
            failure = server.exception() if server is not None and server.done() and not server.cancelled() else None
            if isinstance(failure, InterceptorError):
                raise failure from None  # the reason the agent was sent away
            raise
        remote = await owner.server()
        agent_closed = asyncio.ensure_future(agent.wait_closed())
        remote_closed = asyncio.ensure_future(remote.wait_closed())
        try:
            await asyncio.wait([agent_closed, remote_closed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            agent_closed.cancel()
            remote_closed.cancel()
        if not agent.is_closed():
            agent.disconnect(asyncssh.DISC_CONNECTION_LOST, "interceptor: the server closed the connection")
            await agent.wait_closed()


def _agent_lost(end: FlowEnd, exc: Exception) -> None:
    """The agent's connection ended by `exc`: its fault when it broke the protocol (a
    malformed or oversized packet, a banner flood, no algorithm in common), else an error of
    the connection (it went away, or refused the enforcer's host certificate)."""
    end.error = f"agent connection: {type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"
    if isinstance(exc, AGENT_FAULTS):
        end.fault = Fault.CLIENT


async def _close_server(server: asyncio.Task[asyncssh.SSHClientConnection], end: FlowEnd) -> None:
    """Close the server connection, or stop making it; its failure is the flow's error when
    nothing else was."""
    if not server.done():
        server.cancel()
    await asyncio.wait([server])
    if server.cancelled():
        return
    failure = server.exception()
    if isinstance(failure, InterceptorError):
        end.failed(failure)
        return
    if failure is not None:
        log.error("the server connection of a flow failed: %r", failure)
        end.error = end.error or f"internal error: {type(failure).__name__}: {failure}"
        end.fault = end.fault or Fault.ENFORCER
        return
    remote = server.result()
    remote.close()
    await remote.wait_closed()
