"""The ssh protocol's handler (docs/architecture.md, "How to add a protocol"): asyncssh on
both sides, every exec, shell, SFTP request and forward judged through the Gate
(interceptor.handlers.ssh.gate), interactive sessions recorded."""

from __future__ import annotations

from interceptor.handlers.ssh.handler import SshHandler
from interceptor.handlers.ssh.sftp import SftpProxy

HANDLER = SshHandler(SftpProxy)

__all__ = ["HANDLER", "SshHandler"]
