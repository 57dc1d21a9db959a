"""Retrieval logic of the knowledge base: Search-T2V coarse filtering and ranking (pure numpy, no I/O)."""
