"""Azure Storage queues: send (optionally delayed), receive, delete, depth, poison.

Messages are stored as base64 of UTF-8 text, as the Azure portal and Storage Explorer write
them. Anyone with queue access can write anything, though, so this module decodes the transport
itself (``decode_body``) instead of leaving it to a client policy that raises on the first bad
message: a message that is not base64, not UTF-8, or too large comes back as ``Undecodable``
and goes to the poison queue like any other bad message, and the next message is handled.
The Functions host is told not to decode either (``host.json``: ``messageEncoding: none``), so
``function_app.py`` hands the same raw text to the same decoder.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import time
from collections.abc import Iterable
from dataclasses import dataclass

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import QueueClient, QueueMessage, QueueServiceClient

from shared.store.messages import QUEUES, WorkItem, poison_queue

MAX_DELAY = dt.timedelta(days=7)  # the service's limit for a message's initial invisibility
# Base64 of the decoder's 1 KiB limit fits in ~1.4 KiB; a queue message may be 64 KiB.
MAX_RAW_CHARS = 2048


@dataclass(frozen=True)
class Undecodable:
    """A message whose transport encoding is not ours: why."""

    reason: str


def encode_body(text: str) -> str:
    """What is stored on the queue for ``text``: base64 of its UTF-8 bytes."""
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def decode_body(raw: str | bytes) -> str | Undecodable:
    """The text of a stored message, or why it cannot be ours. Never raises."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            return Undecodable("not base64: the message holds non-ASCII bytes")
    if len(raw) > MAX_RAW_CHARS:
        return Undecodable(f"oversized: {len(raw)} characters on the queue, {MAX_RAW_CHARS} "
                           "at most")
    try:
        data = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        return Undecodable("not base64")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return Undecodable("not UTF-8 text once base64-decoded")


def excerpt(raw: str | bytes, limit: int = 1024) -> str:
    """What an undecodable message says, for the record and the alert: its text when it is
    base64 of something (an oversized message), else what was stored; at most ``limit``."""
    text = raw_text(raw)
    try:
        decoded = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return text[:limit]
    return decoded.decode("utf-8", errors="replace")[:limit]


@dataclass(frozen=True)
class Received:
    """A message taken from a queue: its raw text as stored, the decoded text (or why it could
    not be decoded), and what is needed to delete it."""

    queue: str
    raw: str
    body: str | Undecodable
    dequeue_count: int
    message_id: str
    pop_receipt: str
    inserted_on: dt.datetime | None = None  # the storage service's insertion time

    @property
    def text(self) -> str:
        """The decoded text; empty for an undecodable message."""
        return self.body if isinstance(self.body, str) else ""


@dataclass(frozen=True)
class MessageRef:
    """A message this worker sent and may make visible early (``Queues.wake``): its queue, id
    and the pop receipt Put Message returned."""

    queue: str
    message_id: str
    pop_receipt: str
    inserted_at: dt.datetime  # the storage service's insertion time (``storage_time``)


class Queues:
    """The service's queues and their poison twins."""

    def __init__(self, service: QueueServiceClient) -> None:
        self._service = service
        self._clients: dict[str, QueueClient] = {}
        # When the last message this process sent to each queue is visible, by
        # time.monotonic() (a second late rather than early): run --once asks a queue that came
        # back empty after that less often (``shared.flow.worker``).
        self.visible: dict[str, float] = {}

    def client(self, name: str) -> QueueClient:
        if name not in self._clients:
            client = self._service.get_queue_client(name)  # no codec policy: see decode_body
            with contextlib.suppress(ResourceExistsError):
                client.create_queue()
            self._clients[name] = client
        return self._clients[name]

    def ensure_all(self) -> None:
        for name in QUEUES.values():
            self.client(name)
            self.client(poison_queue(name))

    def send_item(self, item: WorkItem, *, delay: float = 0.0) -> dt.datetime:
        """Send ``item``; returns the insertion time the storage service gave it."""
        return self.send(QUEUES[item.step], item.encode(), delay=delay)

    def send_waking(self, item: WorkItem, *, delay: float) -> MessageRef:
        """Send ``item`` invisible for ``delay`` seconds, keeping what ``wake`` needs to make
        it visible sooner. Put Message answers the message id and a pop receipt (the SDKs'
        ``SendReceipt``/``EnqueuedMessage``, "the object returned in the QueueMessageList array
        when calling Put Message", whose PopReceipt "is required to delete the Message"), and
        Update Message takes a pop receipt with ``visibilitytimeout=0`` ("Update Message",
        Azure Queue Storage REST API): Azurite does the same (tests/lab/provisioning/
        test_sync_looks.py)."""
        queue = QUEUES[item.step]
        seconds = int(min(max(delay, 0.0), MAX_DELAY.total_seconds()))
        sent = self.client(queue).send_message(encode_body(item.encode()),
                                               visibility_timeout=seconds or None)
        self.visible[queue] = max(self.visible.get(queue, 0.0), time.monotonic() + seconds + 1)
        return MessageRef(queue, str(sent.id), str(sent.pop_receipt),
                          storage_time(sent.inserted_on))

    def wake(self, ref: MessageRef) -> bool:
        """Make a delayed message visible now; False when it is no longer as it was sent (it
        became visible and was received meanwhile, or was deleted): nothing to do then."""
        try:
            self.client(ref.queue).update_message(ref.message_id, ref.pop_receipt,
                                                  visibility_timeout=0)
        except ResourceNotFoundError:
            return False
        except HttpResponseError as exc:
            if getattr(exc, "error_code", None) != "PopReceiptMismatch":
                raise
            return False
        return True

    def send(self, queue: str, text: str, *, delay: float = 0.0) -> dt.datetime:
        """Send ``text`` (encoded as base64) to ``queue``, visible after ``delay`` seconds;
        returns its insertion time."""
        return self.send_raw(queue, encode_body(text), delay=delay)

    def send_raw(self, queue: str, raw: str, *, delay: float = 0.0) -> dt.datetime:
        """Store ``raw`` exactly as given (a message that was never ours keeps its bytes);
        returns the insertion time the storage service stamped on it (the time the handlers
        order messages by: ``shared.store.messages``)."""
        seconds = int(min(max(delay, 0.0), MAX_DELAY.total_seconds()))
        sent = self.client(queue).send_message(raw, visibility_timeout=seconds or None)
        self.visible[queue] = max(self.visible.get(queue, 0.0), time.monotonic() + seconds + 1)
        return storage_time(sent.inserted_on)

    def receive(self, queue: str, *, limit: int, visibility: int) -> list[Received]:
        # One request: the first page only. With max_messages the SDK asks again for the
        # rest of ``limit`` whenever a page is short, a second request that is nearly always
        # empty (the queue had fewer messages visible than asked for).
        pages = self.client(queue).receive_messages(
            messages_per_page=limit, visibility_timeout=visibility
        ).by_page()
        messages: Iterable[QueueMessage] = next(pages, [])
        return [
            Received(
                queue=queue,
                raw=raw_text(message.content),
                body=decode_body(raw_text(message.content)),
                dequeue_count=int(message.dequeue_count or 1),
                message_id=message.id,
                pop_receipt=str(message.pop_receipt),
                inserted_on=storage_time(message.inserted_on),
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
        """The decoded text of up to ``limit`` messages (undecodable ones as they are stored)."""
        found = []
        for message in self.client(queue).peek_messages(max_messages=limit):
            body = decode_body(raw_text(message.content))
            found.append(body if isinstance(body, str) else raw_text(message.content))
        return found

    def to_poison(self, queue: str, raw: str) -> None:
        """Park a message, as it was stored, on ``<queue>-poison``: as the Functions host does."""
        self.send_raw(poison_queue(queue), raw)


def storage_time(moment: dt.datetime | None) -> dt.datetime:
    """An insertion time from the storage SDK as an aware UTC datetime (the current time if
    the service gave none, which it always does)."""
    if moment is None:
        return dt.datetime.now(dt.UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def raw_text(content: object) -> str:
    """A message's content as stored (queue messages are text; the Functions host hands over
    its UTF-8 bytes)."""
    if isinstance(content, bytes):
        return content.decode("utf-8", errors="replace")
    return str(content)
