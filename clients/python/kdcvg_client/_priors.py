"""Motion priors: tier names, and collecting a DistillPrior stream into the stored ``Prior``."""

from __future__ import annotations

from kdcvg.v1 import prior_pb2

from .errors import DataLoss

DISTILL_METHOD = "/kdcvg.v1.PriorService/DistillPrior"


def prior_tier_name(tier: int) -> str:
    """The short name of a ``PriorTier`` number: "disk", "host", "device" ("unspecified" for 0)."""
    return prior_pb2.PriorTier.Name(tier).removeprefix("PRIOR_TIER_").lower()


class PriorCollector:
    """Feeds on DistillPrior events; ``result()`` is the prior the last event carries."""

    def __init__(self) -> None:
        self._prior: prior_pb2.Prior | None = None

    def add(self, event: prior_pb2.DistillPriorResponse) -> None:
        if event.HasField("prior"):
            self._prior = event.prior

    def result(self) -> prior_pb2.Prior:
        if self._prior is None:
            raise DataLoss("the stream ended without the stored prior", method=DISTILL_METHOD)
        return self._prior
