"""Events: an interface, an in-process bus and Pub/Sub, and the CloudEvent envelopes they carry."""

from __future__ import annotations

from mountainid.config import Settings
from mountainid.events.base import EventBus, Handler
from mountainid.events.inprocess import InProcessBus

__all__ = ["EventBus", "Handler", "InProcessBus", "open_bus"]


def open_bus(settings: Settings) -> EventBus:
    """The bus the settings name: in-process (embedded) or Pub/Sub (``MOUNTAINID_EVENTS=pubsub``)."""
    if settings.events == "pubsub":
        from mountainid.events.pubsub import PubSubBus  # imported lazily: grpc is heavy

        return PubSubBus(settings.project, emulator_host=settings.pubsub_emulator_host or None)
    return InProcessBus(settings.project)
