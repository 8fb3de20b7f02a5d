"""learn2learn for the tests: the module when installed (``None`` otherwise), and the mark for tests that need it.

It is the reference implementation other tests compare against, but not a hard requirement (its last release needs
its Cython regenerated on Python >= 3.11): outside CI a missing install skips those tests, naming the command to
run; in CI (``CI=true``) it is an error at collection.
"""

from __future__ import annotations

import os
from types import ModuleType

import pytest

INSTALL_HINT = "run `bash scripts/install_learn2learn.sh` to build and install learn2learn 0.2.0"

l2l: ModuleType | None
try:
    import learn2learn as l2l
except ImportError:  # pragma: no cover - CI installs it with scripts/install_learn2learn.sh
    if os.environ.get("CI", "").lower() == "true":
        raise
    l2l = None

#: Skips a test (or, as ``pytestmark``, a module) when learn2learn is not installed.
needs_l2l = pytest.mark.skipif(l2l is None, reason=f"learn2learn missing: {INSTALL_HINT}")
