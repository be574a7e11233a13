"""All answer phrasings of a prompt in one decoder row: a token tree with tree attention.

The perplexity classifier scores 2N fixed phrasings per question (paper, Methods §3). Fed
one phrasing per row, every row needs its own copy of the prompt's KV cache, and tokens
the phrasings share ("Yes", ",") are computed once per phrasing. Here the phrasings of a
prompt are merged into a prefix tree whose nodes are laid out in one row; a node attends
to the prompt and to its own ancestors only (a (N, N) grid instead of the causal
triangle), and its position id is the prompt length plus its depth. Each row then reads
the prompt cache once, and each shared token runs once.

A node is fed only when some phrasing continues past it: the output at a node predicts
its children, and the first token of every phrasing is predicted by the prompt's own
last position (``PromptState.logits``).

Shapes: B prompts, N the most fed nodes of any prompt, L the longest phrasing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class CandidateTree:
    """The fed nodes of every prompt's phrasing tree, right-padded to N."""

    token_ids: torch.Tensor  # (B, N) long, the token at each node (pad id past the end)
    depth: torch.Tensor  # (B, N) long, 0 for a phrasing's first token
    grid: torch.Tensor  # (B, N, N) bool, node i may attend node j (ancestor or itself)
    predictor: list[list[list[int]]]  # [b][c][j]: node whose output predicts token j + 1

    @property
    def width(self) -> int:
        return int(self.token_ids.shape[1])


def build_tree(
    candidates: Sequence[Sequence[Sequence[int]]], pad_id: int, device: torch.device
) -> CandidateTree:
    """``candidates[b][c]``: the token ids of phrasing c of prompt b (at least one id)."""
    nodes: list[list[tuple[int, int, int]]] = []  # per prompt: (token, parent, depth)
    predictor: list[list[list[int]]] = []
    for phrasings in candidates:
        index: dict[tuple[int, ...], int] = {}
        row: list[tuple[int, int, int]] = []
        paths: list[list[int]] = []
        for ids in phrasings:
            path: list[int] = []
            for j in range(len(ids) - 1):  # the last token predicts nothing that is scored
                key = tuple(ids[: j + 1])
                if key not in index:
                    index[key] = len(row)
                    row.append((ids[j], path[-1] if path else -1, j))
                path.append(index[key])
            paths.append(path)
        nodes.append(row)
        predictor.append(paths)

    width = max(1, max(len(row) for row in nodes))
    prompts = len(nodes)
    token_ids = torch.full((prompts, width), pad_id, dtype=torch.long)
    depth = torch.zeros((prompts, width), dtype=torch.long)
    grid = torch.eye(width, dtype=torch.bool).repeat(prompts, 1, 1)  # pads see themselves
    for b, row in enumerate(nodes):
        for i, (token, parent, level) in enumerate(row):
            token_ids[b, i] = token
            depth[b, i] = level
            if parent >= 0:  # parents come first, so their rows are complete
                grid[b, i] |= grid[b, parent]
    return CandidateTree(token_ids.to(device), depth.to(device), grid.to(device), predictor)


def attention_grid(prompt_mask: torch.Tensor, tree_grid: torch.Tensor) -> torch.Tensor:
    """(B, T) prompt mask and (B, N, N) tree grid -> (B, 1, N, T + N) bool attention mask."""
    prompts, width = tree_grid.shape[0], tree_grid.shape[1]
    prompt_part = prompt_mask[:, None, :].expand(prompts, width, -1)  # (B, N, T)
    return torch.cat([prompt_part, tree_grid], dim=2)[:, None]


def node_count(candidates: Sequence[Sequence[Sequence[int]]]) -> int:
    """Fed nodes of the widest prompt (what ``build_tree`` pads to), without building."""
    widest = 0
    for phrasings in candidates:
        prefixes = {tuple(ids[: j + 1]) for ids in phrasings for j in range(len(ids) - 1)}
        widest = max(widest, len(prefixes))
    return max(1, widest)
