"""Who an agent is: identities validated from Okta (OIDC) tokens."""

from interceptor.identity.errors import IdentityConfigError, IdentityProviderError, InvalidToken
from interceptor.identity.model import Identity

__all__ = ["Identity", "IdentityConfigError", "IdentityProviderError", "InvalidToken"]
