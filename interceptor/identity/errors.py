"""Errors of the identity layer. None of them ever carries a token or a secret."""

from __future__ import annotations


class IdentityConfigError(ValueError):
    """An agent's identity configuration is unusable; the message names the agent and field."""


class IdentityProviderError(RuntimeError):
    """The authorization server could not be reached or answered something unusable."""


class InvalidToken(Exception):
    """A token was refused. `reason` is a stable code for policy and audit, `message` says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
