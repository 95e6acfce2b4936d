"""The userspace enforcer: accepts diverted connections, attributes them, hands them to handlers."""
