"""PostgreSQL: the enforcer logs in upstream with the resource's credentials, judges every
statement the agent sends, and relays the rest (see session.py for the state machine)."""

from interceptor.handlers.postgres.handler import PostgresHandler

HANDLER = PostgresHandler()

__all__ = ["HANDLER", "PostgresHandler"]
