"""Pictures a person would rather look at than numbers: score distributions and threshold curves (matplotlib,
headless). The match sheet of a single decision lives in `sheets.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the headless backend


def score_distributions(true_scores: list[float], false_scores: list[float], sweep: dict[str, Any],
                        default_threshold: float, out: Path) -> Path:
    """Left: fused calibrated scores of each query's true individual vs the other candidate individuals (plain
    numbers: the caller knows which is which). Right: the AnimalCLEF score against τ at the best α, with the
    default and the best τ marked."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    bins = [i / 40 for i in range(41)]
    left.hist(false_scores, bins=bins, alpha=0.6, label=f"other individuals ({len(false_scores)})", color="#c44")
    left.hist(true_scores, bins=bins, alpha=0.6, label=f"true individual ({len(true_scores)})", color="#27a")
    left.axvline(default_threshold, color="k", linestyle="--", linewidth=1, label="τ")
    left.set_xlabel("calibrated fused score (best image per candidate individual)")
    left.set_ylabel("candidates")
    left.legend(fontsize=8)
    best = sweep["best"]["overall"]
    row = sweep["alphas"].index(best["alpha"])
    right.plot(sweep["taus"], [v if v is not None else float("nan") for v in sweep["score"]["overall"][row]],
               color="#333", label=f"score (α = {best['alpha']:g})")
    right.axvline(default_threshold, color="k", linestyle="--", linewidth=1, label="default τ")
    right.axvline(best["tau"], color="#2a2", linewidth=1, label=f"best τ = {best['tau']:.2f}")
    right.set_xlabel("τ")
    right.set_ylabel("AnimalCLEF score (√(BAKS·BAUS))")
    right.set_ylim(0, 1)
    right.legend(fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out

