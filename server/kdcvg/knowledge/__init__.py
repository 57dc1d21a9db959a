"""The knowledge base: reference creatives, their embeddings and the tenant-scoped vector index."""
