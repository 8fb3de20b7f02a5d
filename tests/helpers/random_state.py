"""Check that a block of code draws nothing from, and leaves unchanged, every global random generator."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


@contextlib.contextmanager
def unchanged_random_state() -> Iterator[None]:
    """Fail if torch's, NumPy's or Python's global random state differs after the block."""
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    yield
    assert torch.equal(torch.get_rng_state(), torch_state), "torch's global generator moved"
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]
    assert random.getstate() == python_state, "Python's random generator moved"
