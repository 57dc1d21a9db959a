"""kdcvg: knowledge-driven creative ad video generation, served over gRPC."""

__version__ = "0.1.0"
