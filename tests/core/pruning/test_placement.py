"""Placement of blocks on several GPUs, checked with stand-in devices (a pure function of free memory and sizes)."""

import pytest
import torch

from core.errors import UserError
from core.pruning.placement import Placement, block_devices, place_blocks

GB = 1_000_000_000


def test_blocks_stay_resident_while_any_later_block_could_still_visit():
    free = {"cuda:0": 10 * GB, "cuda:1": 10 * GB}
    placements = place_blocks(free, [3 * GB] * 5, working_bytes=2 * GB)
    # keeping a block must leave 3 GB (largest block) + 2 GB (working) free: 10 - 3 = 7 ≥ 5, 7 - 3 = 4 < 5
    assert placements == [Placement("cuda:0", True), Placement("cuda:1", True)] + [Placement("cuda:0", False)] * 3


def test_devices_fill_in_order():
    placements = place_blocks({"cuda:0": 12 * GB, "cuda:1": 20 * GB}, [2 * GB] * 6, working_bytes=GB)
    # reserve 3 GB: cuda:0 keeps 12→10→8→6→4 (four blocks), then cuda:1 takes the rest
    assert [p.device for p in placements] == ["cuda:0"] * 4 + ["cuda:1"] * 2
    assert all(p.resident for p in placements)


def test_no_resident_blocks_when_the_source_streams():
    placements = place_blocks({"cuda:0": 4 * GB, "cuda:1": 9 * GB}, [2 * GB] * 3, working_bytes=GB, keep_resident=False)
    assert placements == [Placement("cuda:1", False)] * 3


def test_a_block_larger_than_every_device_is_a_user_error():
    with pytest.raises(UserError, match="block 1 needs"):
        place_blocks({"cuda:0": 4 * GB}, [1 * GB, 5 * GB], working_bytes=0, keep_resident=False)


def test_one_device_when_no_gpus_or_a_named_device():
    assert block_devices(torch.device("cpu"), "auto", [1, 2, 3], 0, True) == [Placement("cpu", False)] * 3
