"""API keys map to tenants. A caller sends `authorization: Bearer <key>` or `x-api-key: <key>`."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping

# Health checks and reflection are open: load balancers and grpcurl call them without keys.
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class ApiKeys:
    """Resolves the tenant of a call from its metadata."""

    def __init__(self, tenants_by_key: Mapping[str, str]) -> None:
        for key, tenant in tenants_by_key.items():
            if not key or not tenant:
                raise ValueError("API keys and tenants must be non-empty")
        self._tenants = dict(tenants_by_key)

    @staticmethod
    def key_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
        for name, value in metadata or ():
            if isinstance(value, bytes):
                continue
            if name == "authorization":
                scheme, _, token = value.partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    return token.strip()
            elif name == "x-api-key" and value.strip():
                return value.strip()
        return None

    def tenant_for_key(self, key: str | None) -> str | None:
        if key is None:
            return None
        for known, tenant in self._tenants.items():
            # Constant-time comparison: a key must not leak through timing.
            if hmac.compare_digest(known.encode(), key.encode()):
                return tenant
        return None

    def tenant_of(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
        return self.tenant_for_key(self.key_from_metadata(metadata))


def is_public(method: str) -> bool:
    return method.startswith(PUBLIC_METHOD_PREFIXES)
