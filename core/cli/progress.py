"""The engine's events drawn as tqdm bars on stderr."""

from __future__ import annotations

import sys

from ..events import BlockStarted, Event, Finished, Message, Phase


class Progress:
    """Draws the engine's events as tqdm bars on stderr: one bar per phase, and the steps inside a
    decoder block shown on the block bar rather than as bars of their own."""

    INSIDE_BLOCK = {"gather statistics", "prune", "propagate", "dense targets", "quantize"}

    def __init__(self, enabled: bool = True):
        from tqdm import tqdm

        self._tqdm, self._bars, self.enabled = tqdm, {}, enabled

    def __call__(self, event: Event) -> None:
        if not self.enabled:
            return
        if isinstance(event, BlockStarted):
            self._update("blocks", event.index, event.total, "")
        elif isinstance(event, Phase) and event.name in self.INSIDE_BLOCK:
            if "blocks" in self._bars:
                self._bars["blocks"].set_postfix_str(f"{event.name} {event.detail}"[-48:])
        elif isinstance(event, Phase) and event.total:
            self._update(event.name, event.done, event.total, event.detail)
        elif isinstance(event, Finished):
            self.close()
        elif isinstance(event, Message):
            self._tqdm.write(f"{event.level}: {event.text}", file=sys.stderr)

    def _update(self, name: str, done: int, total: int, detail: str) -> None:
        bar = self._bars.get(name)
        if bar is None or bar.total != total or done < bar.n:
            if bar is not None:
                bar.close()
            bar = self._bars[name] = self._tqdm(total=total, desc=name, file=sys.stderr, leave=False,
                                                dynamic_ncols=True)
        bar.set_postfix_str(detail[-40:], refresh=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            del self._bars[name]

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()
