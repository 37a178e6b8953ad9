"""Cloud Pub/Sub behind the :class:`~mountainid.events.base.EventBus` interface, plus the topic and
subscription helpers ``infra``-like code and the local cloud need.

``emulator_host`` (``PUBSUB_EMULATOR_HOST``, e.g. ``127.0.0.1:8085``) selects the emulator: the
clients then talk plain gRPC to it with no credentials. Clients are created once per process and
endpoint, on first use.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache

import grpc
from google.api_core import exceptions as google_exceptions
from google.cloud import pubsub_v1
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from mountainid.events.base import EventBus


class PublishError(RuntimeError):
    """Pub/Sub did not accept a message (missing topic, timeout, permission)."""


@cache
def publisher_client(emulator_host: str | None = None) -> pubsub_v1.PublisherClient:
    """The process's publisher for this endpoint (batches and connections are shared)."""
    if emulator_host:
        # An explicit insecure channel: the emulator speaks plain gRPC and needs no credentials.
        return pubsub_v1.PublisherClient(
            transport=PublisherGrpcTransport(channel=grpc.insecure_channel(emulator_host)))
    return pubsub_v1.PublisherClient()


@cache
def subscriber_client(emulator_host: str | None = None) -> pubsub_v1.SubscriberClient:
    """The process's subscriber (admin of subscriptions, and pulls in tests) for this endpoint."""
    if emulator_host:
        return pubsub_v1.SubscriberClient(
            transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(emulator_host)))
    return pubsub_v1.SubscriberClient()


class PubSubBus(EventBus):
    def __init__(self, project: str, *, emulator_host: str | None = None, timeout_s: float = 30.0) -> None:
        self.project = project
        self.emulator_host = emulator_host or None
        self.timeout_s = timeout_s

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        """Publish and wait until Pub/Sub has the message, so a caller never loses one silently."""
        publisher = publisher_client(self.emulator_host)
        future = publisher.publish(publisher.topic_path(self.project, topic), data, **dict(attributes or {}))
        try:
            return future.result(timeout=self.timeout_s)
        except TimeoutError:
            raise PublishError(f"publishing to {topic!r} took more than {self.timeout_s:.0f}s: is Pub/Sub "
                               f"reachable at {self.emulator_host or 'pubsub.googleapis.com'}?") from None
        except google_exceptions.GoogleAPICallError as exc:
            raise PublishError(f"publishing to {topic!r} failed: {exc}") from exc


def ensure_topic(project: str, topic: str, *, emulator_host: str | None = None) -> str:
    """Create the topic unless it exists; returns its path."""
    publisher = publisher_client(emulator_host or None)
    path = publisher.topic_path(project, topic)
    try:
        publisher.create_topic(name=path)
    except google_exceptions.AlreadyExists:
        pass
    return path


def ensure_pull_subscription(project: str, topic: str, subscription: str, *,
                             emulator_host: str | None = None, ack_deadline_s: int = 60) -> str:
    """Create a pull subscription on the topic unless it exists; returns its path."""
    return _ensure_subscription(project, topic, subscription, None, emulator_host, ack_deadline_s)


def ensure_push_subscription(project: str, topic: str, subscription: str, push_endpoint: str, *,
                             emulator_host: str | None = None, ack_deadline_s: int = 60) -> str:
    """Create (or re-point) a push subscription that POSTs each message to ``push_endpoint``.

    Pub/Sub sends the raw push body (``{"message": ..., "subscription": ...}``); functions-framework
    turns it into a ``messagePublished`` CloudEvent. A non-2xx answer makes Pub/Sub redeliver.
    """
    return _ensure_subscription(project, topic, subscription, push_endpoint, emulator_host, ack_deadline_s)


def _ensure_subscription(project: str, topic: str, subscription: str, push_endpoint: str | None,
                         emulator_host: str | None, ack_deadline_s: int) -> str:
    subscriber = subscriber_client(emulator_host or None)
    path = subscriber.subscription_path(project, subscription)
    push_config = pubsub_v1.types.PushConfig(push_endpoint=push_endpoint or "")
    try:
        subscriber.create_subscription(name=path, topic=publisher_client(emulator_host or None).topic_path(
            project, topic), push_config=push_config, ack_deadline_seconds=ack_deadline_s)
    except google_exceptions.AlreadyExists:
        subscriber.modify_push_config(subscription=path, push_config=push_config)
    return path


@dataclass(frozen=True)
class PulledMessage:
    message_id: str
    data: bytes
    attributes: dict[str, str] = field(default_factory=dict)


def pull(project: str, subscription: str, *, emulator_host: str | None = None, min_messages: int = 1,
         max_messages: int = 100, timeout_s: float = 10.0) -> list[PulledMessage]:
    """Pull and acknowledge messages until at least ``min_messages`` arrived or time is up.

    For tests and local inspection; deployed subscribers get messages pushed as CloudEvents.
    """
    subscriber = subscriber_client(emulator_host or None)
    path = subscriber.subscription_path(project, subscription)
    received: list[PulledMessage] = []
    deadline = time.monotonic() + timeout_s
    while len(received) < min_messages and time.monotonic() < deadline:
        try:
            response = subscriber.pull(subscription=path, max_messages=max_messages,
                                       timeout=max(0.5, deadline - time.monotonic()))
        except google_exceptions.DeadlineExceeded:
            break
        if response.received_messages:
            subscriber.acknowledge(subscription=path,
                                   ack_ids=[m.ack_id for m in response.received_messages])
        received += [PulledMessage(m.message.message_id, m.message.data, dict(m.message.attributes))
                     for m in response.received_messages]
        if not response.received_messages:
            time.sleep(0.1)
    return received
