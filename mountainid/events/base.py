"""The event bus interface: publish a message to a topic.

Two backends: :class:`~mountainid.events.inprocess.InProcessBus` (embedded default: handlers run
in this process) and :class:`~mountainid.events.pubsub.PubSubBus` (Cloud Pub/Sub, or its
emulator). Subscribers are CloudEvent handlers; on GCP the subscription is a trigger or a push
subscription configured by ``infra/``, so only the in-process bus has ``subscribe``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

from cloudevents.http import CloudEvent

Handler = Callable[[CloudEvent], None]


class EventBus(ABC):
    @abstractmethod
    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        """Publish one message; returns its message id once the transport accepted it."""

    def publish_json(self, topic: str, payload: Mapping[str, Any],
                     attributes: Mapping[str, str] | None = None) -> str:
        return self.publish(topic, json.dumps(payload).encode("utf-8"), attributes)

    def close(self) -> None:  # noqa: B027 - a no-op by default: only some buses hold resources
        """Release transport resources (flush pending publishes)."""
