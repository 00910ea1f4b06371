"""What the regression details leave out, drawn back in: a bank of the detail model's residuals on the training
volumes, as patches of ``patch^3`` blocks keyed by the band they refine; sampling lays a lattice of patches over
the band and gives each one the residuals of a training patch whose band looks like it
(``diffusion.detail_residuals``, ``diffusion.detail_residual_patch``). Example-based super-resolution (Freeman,
Jones & Pasztor 2002), with the learnt conditional mean as the prediction and the bank as its missing part.

Why: a detail model trained by regression predicts each 2 x 2 x 2 block's conditional mean. Where the band
below does not decide the detail, such as a thin vessel's place inside its block, the mean smears it. The
finest level's prediction carries about 60% of the bands' energy (rms 0.77 against 0.99 in standardised
units on the benchmark's crops; the residual's rms is 0.70). The result is lungs without their voxel-scale
texture: GLCM contrast and gradients 2-3 sd below the training crops' (docs/quality.md). Noise of the right
variance was tried and is wrong in kind. Gaussian noise, per voxel or with the residual's power spectrum,
roughens everything, while real residuals are sparse: most blocks need almost nothing and a few need a vessel's
edge. Residual *blocks* drawn one by one (the bank before, binned by band value and predicted energy) had that
sparsity but no continuity: an edge drawn in one block did not run on into the next, so at full scale they
read as speckle, and at 0.7 the gradients stayed low. A patch keeps a training region's residuals together,
seven bands of ``patch^3`` blocks: a vessel's or a wall's missing edge runs on across its blocks, and the patch
was chosen where the band is alike, so the edge sits where the band has one (docs/quality.md, the screens).

Matching: the Euclidean distance between the query's band patch and the bank's (standardised units, the band's
own values: tissue and shape together), among the bank's patches of the sample's class when it holds any (a
COVID sample draws COVID texture); one of the :data:`NEIGHBOURS` nearest, uniformly, so two samples with the
same band do not get the same residuals. The lattice has a random offset per sample (its seams fall anywhere)
and the patches do not overlap: their seams are where independent residuals meet, as every block was before.

The bank is fitted after training on the EMA model and the training volumes: every volume's patches on a
lattice of random offset, at most :data:`CAPACITY` of them in all (a seeded random choice), without their
positions or their patient, as buffers of the weights (float16: about 16 MB a level at the capacity). The
buffers are empty until fitted, so a checkpoint of a bank that was never fitted costs nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEIGHBOURS = 8  # a draw is one of the nearest this many patches (diversity; 2-8 screened alike)
CAPACITY = 16_384  # patches kept per level: bounded memory and checkpoint at any volume size
QUERY_CHUNK = 4_096  # query patches matched at once (the distance matrix is chunk x CAPACITY)


def to_patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``(b, c, *grid)`` (every axis a multiple of ``patch``) -> ``(b, patches, c * patch^3)``, patches in raster
    order, each one's channels first."""
    b, c = x.shape[:2]
    g = [n // patch for n in x.shape[2:]]
    x = x.reshape(b, c, g[0], patch, g[1], patch, g[2], patch).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, g[0] * g[1] * g[2], c * patch ** 3)


def from_patches(p: torch.Tensor, grid: list[int], channels: int, patch: int) -> torch.Tensor:
    """:func:`to_patches`' inverse for one volume: ``(patches, c * patch^3)`` -> ``(1, c, *grid)``."""
    g = [n // patch for n in grid]
    x = p.reshape(g[0], g[1], g[2], channels, patch, patch, patch).permute(3, 0, 4, 1, 5, 2, 6)
    return x.reshape(1, channels, *grid)


def lattice(grid: list[int], patch: int, generator: torch.Generator) -> tuple[list[int], list[int]]:
    """A lattice of ``patch``-sized cells with a random offset that covers ``grid``: per axis the start, in
    ``[-patch + 1, 0]`` (grid coordinates), and the number of cells. The offset is drawn first, from
    ``generator``."""
    offset = torch.randint(0, patch, (3,), generator=generator).tolist()
    cells = [-(-(n + o) // patch) for n, o in zip(grid, offset)]
    return [-o for o in offset], cells


def _window(x: torch.Tensor, start: list[int], cells: list[int], patch: int) -> torch.Tensor:
    """``x`` ``(b, c, *grid)`` on the lattice's cells, edges replicated where the lattice passes the grid."""
    ends = [s + n * patch for s, n in zip(start, cells)]
    pad = [(-s, e - n) for s, e, n in zip(start, ends, x.shape[2:])]
    return F.pad(x, [p for axis in reversed(pad) for p in axis], mode="replicate")


class ResidualBank(torch.nn.Module):
    """Residual patches ``(n, channels * patch^3)`` with their keys, the band under them ``(n, patch^3)``, and
    their class ``(n,)`` (buffers: saved with the weights). Unfitted, :meth:`draw` gives zeros."""

    def __init__(self, channels: int, patch: int, capacity: int = CAPACITY) -> None:
        super().__init__()
        self.channels, self.patch, self.capacity = channels, patch, capacity
        self.register_buffer("keys", torch.zeros(0, patch ** 3, dtype=torch.float16))
        self.register_buffer("values", torch.zeros(0, channels * patch ** 3, dtype=torch.float16))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("keys", "values", "labels"):  # a fitted bank's buffers have its size, not the empty one's
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def patches(self, cond: torch.Tensor, residual: torch.Tensor,
                generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A training batch's patches: band ``cond`` ``(b, 1, *grid)`` and residual ``(b, channels, *grid)`` ->
        per volume ``(keys (cells, patch^3), values (cells, channels * patch^3))``, the cells of a lattice of
        random offset that lie inside the grid."""
        out, p = [], self.patch
        for i in range(cond.shape[0]):
            offset = torch.randint(0, p, (3,), generator=generator).tolist()
            box = (..., *(slice(o, o + (n - o) // p * p) for o, n in zip(offset, cond.shape[2:])))
            out.append((to_patches(cond[i:i + 1][box], p)[0], to_patches(residual[i:i + 1][box], p)[0]))
        return out

    @torch.no_grad()
    def fit(self, keys: torch.Tensor, values: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> None:
        """Keep at most :attr:`capacity` of the training patches ``keys`` ``(n, patch^3)``, ``values``
        ``(n, channels * patch^3)`` of classes ``labels`` ``(n,)``: a random choice (``generator``)."""
        pick = torch.randperm(keys.shape[0], generator=generator)[:self.capacity].to(keys.device)
        device = self.fitted.device
        self.keys = keys[pick].to(device, torch.float16)
        self.values = values[pick].to(device, torch.float16)
        self.labels = labels[pick].to(device, torch.long)
        self.fitted.fill_(True)

    def draw(self, cond: torch.Tensor, labels: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """Residuals ``(b, channels, *grid)`` for the band ``cond`` ``(b, 1, *grid)`` of samples of class ``labels``:
        per sample a lattice (:func:`lattice`) and per cell one of the :data:`NEIGHBOURS` nearest training
        patches. Sample ``i`` draws from ``generators[i]`` (CPU), the offset first, so it does not depend on its
        batch."""
        grid = list(cond.shape[2:])
        if not bool(self.fitted):
            return torch.zeros(cond.shape[0], self.channels, *grid, device=cond.device, dtype=cond.dtype)
        p, keys, out = self.patch, self.keys.float(), []
        for i, g in enumerate(generators):
            start, cells = lattice(grid, p, g)
            query = to_patches(_window(cond[i:i + 1].float(), start, cells, p), p)[0]
            same = self.labels == labels[i]
            pool = torch.nonzero(same).flatten() if bool(same.any()) else torch.arange(len(keys), device=keys.device)
            k = min(NEIGHBOURS, len(pool))
            u = torch.rand(query.shape[0], generator=g).to(cond.device)
            nearest = torch.cat([torch.cdist(query[c:c + QUERY_CHUNK], keys[pool]).topk(k, largest=False).indices
                                 for c in range(0, query.shape[0], QUERY_CHUNK)])
            chosen = pool[nearest.gather(1, (u * k).long().clamp(max=k - 1)[:, None])[:, 0]]
            field = from_patches(self.values[chosen].float(), [n * p for n in cells], self.channels, p)
            out.append(field[(..., *(slice(-s, -s + n) for s, n in zip(start, grid)))])
        return torch.cat(out).to(cond.dtype)
