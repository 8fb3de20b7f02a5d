"""Process-group housekeeping for scripts that train with ``strategy="ddp"``.

Lightning creates the ``torch.distributed`` process group and leaves it alive when ``fit`` returns (a later
``validate`` or ``test`` reuses it). A process that then exits with the group still alive can die at interpreter
shutdown: gloo's worker threads still hold tensors, and releasing them during finalization aborts the process
(``terminate called without an active exception``, SIGABRT) after all the work is done. PyTorch's documentation asks
every trainer process to call ``destroy_process_group()`` once communication is over; :func:`end_process_group` is
that call, safe to make whether or not a group exists. ``lightning-meta`` makes it after a successful run.
"""

from __future__ import annotations

import torch.distributed as dist


def end_process_group() -> bool:
    """Destroy the default process group if one is alive; return whether there was one.

    Call it once per process at the very end of a script, after the last ``fit``, ``validate`` or ``test``, and only
    when they succeeded (destroying the group while another rank is still in a collective can hang).

    Example:
        >>> end_process_group()  # no process group in this process: nothing to do
        False
    """
    if not (dist.is_available() and dist.is_initialized()):
        return False
    dist.destroy_process_group()
    return True
