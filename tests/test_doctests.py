"""Run the ``Example:`` doctests of the library, collected by dotted module name.

Collecting by name imports each module once, through the installed package; ``pytest --doctest-modules
callbacks/`` would import a second copy of ``lightning_meta.callbacks`` as a top-level ``callbacks`` package
(STYLE.md item 5). The modules to run are the ones whose source holds an example (a ``>>>`` line), found by
reading ``lightning_meta/`` and ``callbacks/``, so a new module's examples run without editing this file and a
module without examples is never listed; ``REQUIRED`` names the modules that must keep theirs.
"""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Modules whose public API must stay documented by runnable examples.
REQUIRED = [
    "lightning_meta.episode",
    "lightning_meta.metrics",
    "lightning_meta.data.datamodule",
    "lightning_meta.data.sampler",
    "lightning_meta.data.sinusoid",
    "lightning_meta.data.tasks",
]

OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
_EXAMPLE = re.compile(r"^\s*>>> ", re.MULTILINE)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[0] == "callbacks":  # installed as lightning_meta.callbacks (see pyproject.toml)
        parts = ["lightning_meta", *parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_with_examples() -> list[str]:
    """Dotted names of the library modules whose source holds at least one ``>>>`` example."""
    sources = [*(REPO / "lightning_meta").rglob("*.py"), *(REPO / "callbacks").rglob("*.py")]
    return sorted(_module_name(p) for p in sources if _EXAMPLE.search(p.read_text(encoding="utf-8")))


MODULES = modules_with_examples()


@pytest.mark.parametrize("module_name", MODULES)
def test_doctests_pass(module_name):
    module = importlib.import_module(module_name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, module_name)
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    report: list[str] = []
    for test in sorted(tests, key=lambda t: t.name):
        runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    # A ">>>" the finder does not see (outside a docstring, or in an object it skips) would silently never run.
    assert results.attempted > 0, f"{module_name} has '>>>' lines but doctest finds no examples in its docstrings"
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed:\n" + "".join(report)


def test_required_modules_have_examples():
    assert sorted(set(REQUIRED) - set(MODULES)) == [], "these modules must document their API with examples"
