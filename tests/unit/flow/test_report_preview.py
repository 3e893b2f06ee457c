"""``report --preview`` shows the users waiting, as the report timer's digest does."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from shared import cli
from shared.config.prices import Prices
from shared.flow.transitions import Policy
from shared.store.ledger import LedgerRow, State, now
from shared.store.messages import Step, WorkItem


def test_the_preview_shows_a_user_waiting_for_a_licence_unit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user waiting on a shortage is in the preview's users waiting, with the reason,
    although nobody was provisioned since the last digest; a leaver's returned licence is in
    the leavers section."""
    row = dataclasses.replace(
        LedgerRow.queued(WorkItem(user=uuid.uuid4(), step=Step.LICENSE)),
        state=State.WAITING, wait="shortage", name="jdoe42",
        last_error="license waits for jdoe42: no free unit of ENTERPRISEPACK")

    def rows_in(*states: State) -> list[LedgerRow]:
        return [row] if State.WAITING in states else []

    returned = {"RowKey": f"{now():%Y-%m-%d}T00:00:00+00:00-x", "name": "jleft",
                "upn": "jleft@contoso.com", "skus": "ENTERPRISEPACK"}
    svc: Any = SimpleNamespace(
        cursors=SimpleNamespace(get=lambda _: None),
        outcomes=SimpleNamespace(since=lambda kind, last: [returned] if kind == "leaver_unlicensed"
                                 else []),
        ledger=SimpleNamespace(rows_in=rows_in), policy=Policy(), close=lambda: None,
        settings=SimpleNamespace(leavers=SimpleNamespace(prices=Prices())))
    monkeypatch.setattr(cli, "_service", lambda: svc)
    monkeypatch.setattr(cli, "_skus", lambda _: [])
    out = tmp_path / "digest.html"
    result = CliRunner().invoke(cli.app, ["report", "--preview", str(out)])
    assert 0 == result.exit_code, result.output
    html = out.read_text(encoding="utf-8")
    assert ("jdoe42" in html, "no licence unit" in html) == (True, True)
    assert ("Licences returned" in html, "jleft@contoso.com" in html) == (True, True)
    assert "1 waiting" in result.output
