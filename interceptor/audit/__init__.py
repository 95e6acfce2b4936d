"""The audit trail: every action recorded, never silently dropped."""

from interceptor.audit.event import AuditEvent, AuditSink, AuditUnavailable

__all__ = ["AuditEvent", "AuditSink", "AuditUnavailable"]
