"""The embedded event bus: Pub/Sub semantics, no server.

Messages are queued and delivered by :meth:`InProcessBus.drain`, as the same CloudEvents a Pub/Sub
trigger would deliver. A handler that raises is retried (at-least-once, like Pub/Sub) up to
``max_attempts`` times, then the message is logged as dead-lettered; one bad message never stops
the others. Queueing rather than calling handlers inside ``publish`` keeps a publisher (say the
ingest) from running a subscriber (the filter) in the middle of its own work.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import defaultdict, deque
from collections.abc import Mapping

from cloudevents.http import CloudEvent

from mountainid.events.base import EventBus, Handler
from mountainid.events.cloudevents import pubsub_event
from mountainid.logs import event as log_event

log = logging.getLogger(__name__)


class InProcessBus(EventBus):
    def __init__(self, project: str = "mountainid-local", max_attempts: int = 3) -> None:
        self.project = project
        self.max_attempts = max_attempts
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._queue: deque[tuple[str, CloudEvent, Handler, int]] = deque()
        self._lock = threading.Lock()
        self.dead_letters: list[tuple[str, CloudEvent]] = []

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._handlers[topic].append(handler)

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        message_id = uuid.uuid4().hex
        cloud_event = pubsub_event(self.project, topic, data, attributes, message_id)
        with self._lock:
            for handler in self._handlers.get(topic, []):
                self._queue.append((topic, cloud_event, handler, 1))
        return message_id

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def drain(self) -> int:
        """Deliver queued messages (and those their handlers publish) until none is left."""
        delivered = 0
        while True:
            with self._lock:
                if not self._queue:
                    return delivered
                topic, cloud_event, handler, attempt = self._queue.popleft()
            try:
                handler(cloud_event)
                delivered += 1
            except Exception:  # noqa: BLE001 - any handler failure means redeliver, as Pub/Sub does
                if attempt < self.max_attempts:
                    log_event(log, "handler failed, will redeliver", level=logging.WARNING, exc_info=True,
                              topic=topic, message_id=cloud_event["id"], attempt=attempt)
                    with self._lock:
                        self._queue.append((topic, cloud_event, handler, attempt + 1))
                else:
                    log_event(log, "handler failed, message dead-lettered", level=logging.ERROR,
                              exc_info=True, topic=topic, message_id=cloud_event["id"], attempt=attempt)
                    self.dead_letters.append((topic, cloud_event))
