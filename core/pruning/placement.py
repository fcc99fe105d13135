"""Which device computes each decoder block when more than one GPU is present.

`place_blocks` is a pure function of the devices' free memory and the blocks' sizes, so it is tested
on the CPU with stand-in devices. Devices are filled in order, as accelerate's device maps do: a block
stays *resident* on the first device that, after taking it, still has room for the largest block plus
the working memory of one block's turn (activations, Hessians), so any later block can still visit;
a block that no device can keep goes, for its turn only, to the device with the most room left.
The free memory of real GPUs comes from accelerate's `get_max_memory`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ..errors import UserError

GIB = 1 << 30


@dataclass(frozen=True)
class Placement:
    device: str
    resident: bool      # stays on its device until the run ends; else moved back after its turn


def place_blocks(free_bytes: Mapping[str, int], block_bytes: Sequence[int], working_bytes: int,
                 keep_resident: bool = True) -> list[Placement]:
    """One `Placement` per block, in block order; raises `UserError` when a block fits no device at all."""
    room = dict(free_bytes)
    reserve = working_bytes + max(block_bytes, default=0)
    placements = []
    for index, size in enumerate(block_bytes):
        need = size + working_bytes
        keeper = next((d for d, left in room.items() if keep_resident and left - size >= reserve), None)
        if keeper is not None:
            room[keeper] -= size
            placements.append(Placement(keeper, True))
            continue
        roomiest = max(room, key=room.get, default=None)
        if roomiest is None or room[roomiest] < need:
            most = room[roomiest] / GIB if roomiest is not None else 0.0
            raise UserError(
                f"block {index} needs {need / GIB:.1f} GiB on the compute device but the most free on any GPU "
                f"is {most:.1f} GiB: use fewer calibration windows, a smaller batch, or --device cpu.")
        placements.append(Placement(roomiest, False))
    return placements


def gpu_free_bytes() -> dict[str, int]:
    """Free memory of every visible CUDA device, as accelerate measures it."""
    from accelerate.utils import get_max_memory

    return {f"cuda:{key}": int(value) for key, value in get_max_memory().items() if isinstance(key, int)}


def block_devices(device: torch.device, requested: str, block_bytes: Sequence[int], working_bytes: int,
                  keep_resident: bool) -> list[Placement]:
    """Placements for a run: spread over every GPU when several are present and none was named, else `device`."""
    several = device.type == "cuda" and requested in ("auto", "cuda", "", None) and torch.cuda.device_count() > 1
    if not several:
        return [Placement(str(device), False) for _ in block_bytes]
    return place_blocks(gpu_free_bytes(), block_bytes, working_bytes, keep_resident)
