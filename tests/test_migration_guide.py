"""Every ``python`` block of examples/migrating_from_learn2learn.md runs: the learn2learn loops and ours, side by side.

Each ``## section`` runs in a fresh namespace after the blocks of ``## Setup``, in a temporary working directory (the
snippets' Trainers write their checkpoints there).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.helpers.learn2learn import needs_l2l

GUIDE = Path(__file__).resolve().parents[1] / "examples" / "migrating_from_learn2learn.md"
SETUP = "Setup"
SIDE_BY_SIDE = ("MAML", "Prototypical Networks", "ANIL")
_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def sections() -> dict[str, str]:
    """The text under each ``## heading`` of the guide."""
    parts = re.split(r"^## (.+)$", GUIDE.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def blocks(text: str) -> list[str]:
    return _BLOCK.findall(text)


def run_blocks(codes: list[str], where: str) -> dict:
    namespace: dict = {"__name__": "__migration_guide__"}
    for number, code in enumerate(codes, start=1):
        exec(compile(code, f"{GUIDE.name} [{where}, block {number}]", "exec"), namespace)
    return namespace


def test_the_guide_shows_learn2learn_and_lightning_meta_side_by_side_for_maml_protonets_and_anil():
    found = sections()
    assert SETUP in found and blocks(found[SETUP])
    for title in SIDE_BY_SIDE:
        subsections = re.split(r"^### (.+)$", found[title], flags=re.MULTILINE)
        named = dict(zip(subsections[1::2], subsections[2::2], strict=True))
        assert list(named) == ["learn2learn", "lightning_meta"], title
        assert "clone()" in named["learn2learn"] or title == "Prototypical Networks"
        assert all(len(blocks(text)) == 1 for text in named.values()), title
        assert "from lightning_meta" in blocks(named["lightning_meta"])[0]


@needs_l2l
@pytest.mark.parametrize("title", [t for t in sections() if t != SETUP and blocks(sections()[t])])
def test_migration_guide_snippets_run(title, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    namespace = run_blocks(blocks(sections()[SETUP]) + blocks(sections()[title]), title)
    trainer = namespace.get("trainer")
    if trainer is not None:
        assert trainer.global_step == trainer.max_steps
        assert all(bool(value.isfinite()) for value in trainer.callback_metrics.values())
    assert time.perf_counter() - start < 60, "keep the guide's snippets small"
