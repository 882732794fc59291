"""Input size for images: probe the frozen features at several sizes, advise the best lift for its cost.

A ViT's cost per image grows with its patches (side / patch, squared); its features may need the
size it was pre-trained at, or may not (28 px product photos: 0.784 at 56 px, 0.791 at 112 px, for
4x the compute). So the size is measured, not assumed: the probe runs at the data's native size,
at the checkpoint's own size and between, and the advice takes the cheapest size whose lift is
within TIE of the best. `hftl train` warns when a size leaves very few patches
(tasks/image_classification.FEW_PATCHES).
Plain values in: commands/advise.py runs the probes.
"""

from __future__ import annotations

import math

TIE = 0.02  # lift: closer than this to the best size is as good, and the cheaper one wins
MIN_SIDE_PATCHES = 2  # the smallest size probed: 2 x 2 patches


def _multiple(side: float, patch: int) -> int:
    return max(MIN_SIDE_PATCHES * patch, int(round(side / patch)) * patch)


def sizes(native: float, own: int, patch: int, recipe: int | None = None) -> list[int]:
    """Sides to probe, smallest first: the data's native size, the checkpoint's own, their geometric mean
    (each a multiple of the patch), and the recipe's own image_size when it has one."""
    low = _multiple(min(native, own), patch)
    high = _multiple(own, patch)
    middle = _multiple(math.sqrt(low * high), patch)
    found = {low, middle, high} | ({recipe} if recipe else set())
    return sorted(found)


def row(size: int, patch: int, probe, seconds: float) -> dict:
    return {"size": size, "patches": (size // patch) ** 2, "score": probe.score, "lift": probe.lift,
            "seconds": round(seconds, 2)}


def choose(rows: list[dict]) -> dict:
    """The cheapest size whose lift is within TIE of the best lift."""
    best = max(r["lift"] for r in rows)
    return min((r for r in rows if r["lift"] >= best - TIE), key=lambda r: r["patches"])


def lines(rows: list[dict]) -> list[str]:
    """The report's lines: every size with its lift and cost ratio, and the choice with its reason."""
    base = min(r["patches"] for r in rows)
    chosen = choose(rows)
    out = [f"{r['size']} px ({r['patches']} patches, cost x{r['patches'] / base:.1f}): probe {r['score']:.3f}, lift "
           f"{r['lift']:.2f} ({r['seconds']:.1f} s)" for r in rows]
    spread = max(r["lift"] for r in rows) - min(r["lift"] for r in rows)
    if spread < TIE:
        out.append(f"resolution does not matter here (lifts within {spread:.2f}): the cheapest, {chosen['size']} px")
    else:
        out.append(f"advised image_size {chosen['size']}: the cheapest size within {TIE} lift of the best")
    return out
