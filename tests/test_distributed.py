"""end_process_group: the call that keeps a finished DDP process from aborting at exit."""

from __future__ import annotations

import torch
import torch.distributed as dist

from lightning_meta.distributed import end_process_group


def test_end_process_group_destroys_a_live_group_and_is_a_no_op_without_one(tmp_path):
    assert end_process_group() is False
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        tensor = torch.ones(2)
        dist.all_reduce(tensor)  # the group works
        assert end_process_group() is True
        assert not dist.is_initialized()
        assert end_process_group() is False
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
