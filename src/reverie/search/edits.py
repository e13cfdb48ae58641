"""Children: r per member, each one edit of its parent (step 2 of the loop).

`swap_children` makes the paper's children, for prompts of one length. `edit_children` makes children
by insertion and deletion as well as swaps, for prompts whose length may vary.

A swap replaces the token at a position with one of that position's top-k gradient tokens (the
paper's only mutation). An insertion puts one of the top-k tokens of position g into the gap before
position g (pushing the rest right; the gradient of the position the new token takes stands in for
the gradient at the gap); a deletion drops the token at a position. Insertions let a word that needs
two tokens appear in one step; deletions drop filler. Prompt lengths stay within [min, max];
cross-entropy is a per-token mean, so prompts of different lengths compare fairly.

Prompts of different lengths travel as one tensor, left-aligned and padded with PAD (-1).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

PAD = -1


class Children(NamedTuple):
    """One iteration's children: ids [C, n] (PAD-padded), each one's parent (population index) and the
    position its edit touched."""

    ids: torch.Tensor
    parent: torch.Tensor
    pos: torch.Tensor


def lengths(ids: torch.Tensor) -> torch.Tensor:
    return (ids != PAD).sum(1)


def pad(rows: list[torch.Tensor]) -> torch.Tensor:
    """Rows of different lengths as one [len(rows), longest] tensor padded with PAD."""
    out = torch.full((len(rows), max(len(r) for r in rows)), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def trim(ids: torch.Tensor) -> torch.Tensor:
    """Drop trailing columns that are padding in every row."""
    return ids[:, : int(lengths(ids).max())]


def unpad(ids: torch.Tensor) -> list[torch.Tensor]:
    return [r[:n] for r, n in zip(ids, lengths(ids).tolist())]


def swap_children(
    population: torch.Tensor, top: list[torch.Tensor], r: int, k: int, generator: torch.Generator
) -> Children:
    """r children per member of population [M, n], each with one position swapped for one of its first k
    top tokens (`top[m]`: [n, K]). Draws: the positions [M, r], then the picks [M, r].
    Returns the children [M·r, n], each one's parent and swapped position."""
    M, n = population.shape
    tops = torch.stack(top)  # [M, n, K]
    pos = torch.randint(n, (M, r), generator=generator)
    pick = torch.randint(min(tops.shape[-1], k), (M, r), generator=generator)
    parent = torch.arange(M)[:, None].expand(M, r)
    children = population[parent].clone()  # [M, r, n]
    children.scatter_(2, pos[..., None], tops[parent, pos, pick][..., None])
    return Children(children.reshape(M * r, n), parent.reshape(-1), pos.reshape(-1))


def edit_children(
    population: torch.Tensor,
    top: list[torch.Tensor],
    r: int,
    k: int,
    generator: torch.Generator,
    insert_rate: float,
    delete_rate: float,
    min_length: int,
    max_length: int,
) -> Children:
    """r children per member: each an insertion (probability insert_rate), a deletion (delete_rate) or a
    swap, drawing tokens from the member's top-k lists (`top[m]`: [n_m, K]; the first k are used).
    An insertion at the longest allowed length, or a deletion at the shortest, becomes a swap.
    Returns the children (padded), each one's parent and edited position."""
    M = len(population)
    kind = torch.rand(M, r, generator=generator)
    where = torch.rand(M, r, generator=generator)
    pick = torch.randint(min(k, top[0].shape[-1]), (M, r), generator=generator)
    rows, parent, position = [], [], []
    for m, base in enumerate(unpad(population)):
        n = len(base)
        for j in range(r):
            insert = kind[m, j] < insert_rate and n < max_length
            delete = not insert and insert_rate <= kind[m, j] < insert_rate + delete_rate and n > min_length
            if insert:
                g = int(where[m, j] * (n + 1))
                token = top[m][min(g, n - 1), pick[m, j]]
                child = torch.cat([base[:g], token[None], base[g:]])
            elif delete:
                g = int(where[m, j] * n)
                child = torch.cat([base[:g], base[g + 1 :]])
            else:
                g = int(where[m, j] * n)
                child = base.clone()
                child[g] = top[m][g, pick[m, j]]
            rows.append(child)
            parent.append(m)
            position.append(g)
    return Children(pad(rows), torch.tensor(parent), torch.tensor(position))
