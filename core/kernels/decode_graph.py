"""One decode step with a static KV cache (transformers' StaticCache), eager or captured once in a CUDA
graph and replayed, so that per-call setup (Python, dispatch, kernel launches) is paid at capture and
not per token. The cache, the token, the positions and the logits live at fixed addresses; a replay
writes the new key/value in place and advances the cache's own length tensor.
"""

from __future__ import annotations

import inspect

import torch
from transformers import StaticCache


class DecodeStep:
    """`prefill(prompt)` then `step(tokens)` → logits of the last position, [batch, vocab]."""

    def __init__(self, model, max_len: int, graphed: bool = False):
        if graphed and not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device")
        self.model, self.max_len, self.graphed = model, max_len, graphed
        params = inspect.signature(model.forward).parameters
        self.keyword = "cache" if "cache" in params else "past_key_values"
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.cache, self.pos, self.graph = None, 0, None

    @torch.no_grad()
    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        """The prompt into an empty cache (allocated once, zeroed on later calls); a captured step is dropped."""
        if self.cache is None:
            self.cache = StaticCache(config=self.model.config, max_cache_len=self.max_len)
        else:
            self.cache.reset()
        self.graph, self.pos = None, prompt.shape[1]
        out = self.model(input_ids=prompt, use_cache=True, **{self.keyword: self.cache}, **self.extra)
        return out.logits[:, -1]

    def _forward(self, tokens, positions):
        out = self.model(input_ids=tokens, position_ids=positions, use_cache=True, **{self.keyword: self.cache},
                         **self.extra)
        return out.logits[:, -1]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits after feeding `tokens` [batch, 1] at the next position."""
        if self.pos >= self.max_len:
            raise RuntimeError(f"the static cache holds {self.max_len} positions; all are used")
        if not self.graphed:
            positions = torch.full_like(tokens, self.pos)
            self.pos += 1
            return self._forward(tokens, positions)
        if self.graph is None:
            self._capture(tokens)
        self.tokens.copy_(tokens)
        self.positions.fill_(self.pos)
        self.pos += 1
        self.graph.replay()
        return self.logits

    def _capture(self, tokens) -> None:
        """Warm up on a side stream and capture one step at the current position; the warm-up's write to
        the cache is undone by putting each layer's length back (its key/value slot is rewritten)."""
        self.tokens, self.positions = tokens.clone(), torch.full_like(tokens, self.pos)
        lengths = [(layer, layer.cumulative_length.clone()) for layer in self._layers()]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(self.tokens, self.positions)
                for layer, length in lengths:
                    layer.cumulative_length.copy_(length)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self._forward(self.tokens, self.positions)
        self.graph = graph

    def _layers(self):
        layers = getattr(self.cache, "layers", None)
        if not layers or not all(hasattr(layer, "cumulative_length") for layer in layers):
            raise RuntimeError("this transformers' StaticCache keeps no per-layer length tensor; cannot capture")
        return layers


@torch.no_grad()
def greedy(step: DecodeStep, prompt: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy decoding through `step`: (tokens [batch, new_tokens], logits of each step)."""
    logits = [step.prefill(prompt).clone()]
    tokens = [logits[0].argmax(-1, keepdim=True)]
    for _ in range(new_tokens - 1):
        logits.append(step.step(tokens[-1]).clone())
        tokens.append(logits[-1].argmax(-1, keepdim=True))
    return torch.cat(tokens, dim=1), logits
