"""Format `registry evaluate --out` JSON reports as the markdown table in docs/accuracy.md.

    .venv/bin/python benchmarks/accuracy_table.py nyala=benchmarks/results/accuracy_nyala.json \\
        holstein=benchmarks/results/accuracy_holstein.json synthetic=benchmarks/results/accuracy_synthetic.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def rows(name: str, report: dict) -> list[str]:
    out = []
    blocks = {"registry decisions (as configured)": report["overall"], **{
        k: v.get("overall", v) for k, v in report.get("configurations", {}).items()}}
    best = report.get("sweep", {}).get("best", {}).get("overall")
    for config, block in blocks.items():
        out.append(f"| {name} | {config} | {_f(block['baks'])} | {_f(block['baus'])} | {_f(block['score'])} | "
                   f"{_f(block['top1'])} | {_f(block['top5'])} | {block['queries']} |")
    if best:
        out.append(f"| {name} | best τ on these queries (α {best['alpha']:g}, τ {best['tau']:.2f}; upper bound) "
                   f"| | | {_f(best['score'])} | | | |")
    return out


def main() -> None:
    print("| data | configuration | BAKS | BAUS | score | top-1 | top-5 | queries |")
    print("|---|---|---|---|---|---|---|---|")
    for argument in sys.argv[1:]:
        name, _, path = argument.partition("=")
        for line in rows(name, json.loads(Path(path).read_text())):
            print(line)


if __name__ == "__main__":
    main()
