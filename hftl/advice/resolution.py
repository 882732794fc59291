"""Input size for images: probe the frozen features at several sizes, advise the best lift for its cost.

A ViT's cost per image grows with its patches (side / patch, squared); its features may need the
size it was pre-trained at, or may not (28 px product photos: 0.784 at 56 px, 0.791 at 112 px, for
4x the compute). So the size is measured, not assumed: the probe runs at the data's native size,
at the checkpoint's own size and between, and the advice takes the cheapest size whose lift is
within the probe's noise of the best, never under FEW_PATCHES where a larger size was probed:
`hftl train` warns there too (tasks/image_classification.FEW_PATCHES).
Plain values in: commands/advise.py runs the probes.
"""

from __future__ import annotations

import math

TIE = 0.02  # lift: at least this close to the best size is as good (more where the probe's noise is larger)
MIN_SIDE_PATCHES = 2  # the smallest size probed: 2 x 2 patches
FEW_PATCHES = 16  # never advised below this many patches where a larger size was probed (`hftl train` warns there)


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
    p = min(max(probe.score, 1e-3), 1 - 1e-3)
    noise = 2 * math.sqrt(p * (1 - p) / max(probe.examples, 1)) / (1 - probe.chance)  # two standard errors, in lift
    return {"size": size, "patches": (size // patch) ** 2, "score": probe.score, "lift": probe.lift,
            "noise": round(noise, 4), "seconds": round(seconds, 2)}


def tie(rows: list[dict]) -> float:
    return max([TIE, *(r.get("noise", 0) for r in rows)])


def choose(rows: list[dict]) -> dict:
    """The cheapest size whose lift is within the probe's noise (at least TIE) of the best, among sizes with
    FEW_PATCHES patches or more where any was probed."""
    enough = [r for r in rows if r["patches"] >= FEW_PATCHES] or rows
    best = max(r["lift"] for r in enough)
    return min((r for r in enough if r["lift"] >= best - tie(rows)), key=lambda r: r["patches"])


def lines(rows: list[dict]) -> list[str]:
    """The report's lines: every size with its lift and cost ratio, and the choice with its reason."""
    base = min(r["patches"] for r in rows)
    chosen = choose(rows)
    out = [f"{r['size']} px ({r['patches']} patches, cost x{r['patches'] / base:.1f}): probe {r['score']:.3f}, lift "
           f"{r['lift']:.2f} ({r['seconds']:.1f} s)" for r in rows]
    spread = max(r["lift"] for r in rows) - min(r["lift"] for r in rows)
    if spread < tie(rows):
        out.append(f"resolution does not matter here (lifts within {spread:.2f}, noise {tie(rows):.2f}): the cheapest "
                   f"with {FEW_PATCHES}+ patches, {chosen['size']} px")
    else:
        out.append(f"advised image_size {chosen['size']}: the cheapest size with {FEW_PATCHES}+ patches within the "
                   f"probe's noise ({tie(rows):.2f} lift) of the best")
    return out
