"""The queue transport's limits, as numbers (issue 28): a stored message is at most 2048
characters, and a received message's text is empty when it could not be decoded."""

from __future__ import annotations

from shared.store.queues import Received, Undecodable, decode_body


def test_a_stored_message_may_hold_2048_characters_and_no_more() -> None:
    """2048 characters of base64 are decoded; 2049 are refused as oversized, naming both
    numbers."""
    assert "ABC" * 512 == decode_body("QUJD" * 512)
    assert Undecodable("oversized: 2049 characters on the queue, 2048 at most") == decode_body(
        "QUJD" * 512 + "=")


def test_a_received_message_s_text_is_its_decoded_body_or_empty() -> None:
    """Decoded: the text; undecodable: the empty string (the reason stays in body)."""
    def received(body: str | Undecodable) -> Received:
        return Received("work", "raw", body, 1, "m1", "p1")

    assert ("hello", "") == (received("hello").text, received(Undecodable("not base64")).text)
