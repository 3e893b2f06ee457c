"""Azure Storage queues: send (optionally delayed), receive, delete, depth, poison.

Messages are base64-encoded UTF-8 text, which is what the Functions host expects by default
(``host.json``: ``extensions.queues.messageEncoding = base64``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import (
    BinaryBase64DecodePolicy,
    BinaryBase64EncodePolicy,
    QueueClient,
    QueueServiceClient,
)

from .messages import QUEUES, WorkItem, poison_queue

MAX_DELAY = dt.timedelta(days=7)  # the service's limit for a message's initial invisibility


@dataclass(frozen=True)
class Received:
    """A message taken from a queue: its text, and what is needed to delete it."""

    queue: str
    text: str
    dequeue_count: int
    message_id: str
    pop_receipt: str


class Queues:
    """The service's queues and their poison twins."""

    def __init__(self, service: QueueServiceClient) -> None:
        self._service = service
        self._clients: dict[str, QueueClient] = {}

    def client(self, name: str) -> QueueClient:
        if name not in self._clients:
            client = self._service.get_queue_client(
                name,
                message_encode_policy=BinaryBase64EncodePolicy(),
                message_decode_policy=BinaryBase64DecodePolicy(),
            )
            with contextlib.suppress(ResourceExistsError):
                client.create_queue()
            self._clients[name] = client
        return self._clients[name]

    def ensure_all(self) -> None:
        for name in QUEUES.values():
            self.client(name)
            self.client(poison_queue(name))

    def send_item(self, item: WorkItem, *, delay: float = 0.0) -> None:
        self.send(QUEUES[item.step], item.encode(), delay=delay)

    def send(self, queue: str, text: str, *, delay: float = 0.0) -> None:
        seconds = int(min(max(delay, 0.0), MAX_DELAY.total_seconds()))
        self.client(queue).send_message(text.encode("utf-8"), visibility_timeout=seconds or None)

    def receive(self, queue: str, *, limit: int, visibility: int) -> list[Received]:
        messages = self.client(queue).receive_messages(
            messages_per_page=limit, max_messages=limit, visibility_timeout=visibility
        )
        return [
            Received(
                queue=queue,
                text=_text(message.content),
                dequeue_count=int(message.dequeue_count or 1),
                message_id=message.id,
                pop_receipt=str(message.pop_receipt),
            )
            for message in messages
        ]

    def delete(self, message: Received) -> bool:
        """Delete a handled message; False when it is no longer ours to delete: its
        visibility ran out and it was received again (Storage's ``PopReceiptMismatch``), or
        that second receiver deleted it already. The ledger makes the second delivery harmless."""
        try:
            self.client(message.queue).delete_message(message.message_id, message.pop_receipt)
        except ResourceNotFoundError:
            return False
        except HttpResponseError as exc:
            if getattr(exc, "error_code", None) != "PopReceiptMismatch":  # set by the SDK
                raise
            return False
        return True

    def depth(self, queue: str) -> int:
        """Approximate number of messages, the invisible (delayed, in-flight) ones included."""
        return int(self.client(queue).get_queue_properties().approximate_message_count or 0)

    def peek(self, queue: str, limit: int = 32) -> list[str]:
        return [_text(m.content) for m in self.client(queue).peek_messages(max_messages=limit)]

    def to_poison(self, queue: str, text: str) -> None:
        """Park a message on ``<queue>-poison``, as the Functions host does."""
        self.send(poison_queue(queue), text)


def _text(content: object) -> str:
    if isinstance(content, bytes):
        return content.decode("utf-8", errors="replace")
    return str(content)
