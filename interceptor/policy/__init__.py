"""The policy: a YAML language (schema in policy/schema.json), its loader, and the engine
that judges each operation (SQL understood through sqlglot). See policy/README.md."""

from interceptor.policy.engine import PolicyEngine
from interceptor.policy.loader import PolicyError, load_policy, load_policy_text, parse_address
from interceptor.policy.model import AddressSpec, AgentSpec, Policy, ResourceSpec, Rule
from interceptor.policy.sql import SchemaCatalog, analyse
from interceptor.policy.sql_rules import DANGEROUS_FUNCTIONS
from interceptor.policy.statement import Call, Statement

__all__ = [
    "DANGEROUS_FUNCTIONS",
    "AddressSpec",
    "AgentSpec",
    "Call",
    "Policy",
    "PolicyEngine",
    "PolicyError",
    "ResourceSpec",
    "Rule",
    "SchemaCatalog",
    "Statement",
    "analyse",
    "load_policy",
    "load_policy_text",
    "parse_address",
]
