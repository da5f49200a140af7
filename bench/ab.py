"""Two revisions of the worker side by side: the benchmark's end-to-end part, run alternately
in a git worktree of each, so that both see the machine at about the same speed.

    .venv/bin/python -m bench.ab 844bf45 HEAD               # 4 rounds of 20k events
    .venv/bin/python -m bench.ab main HEAD --rounds 6 --events 50000

Prints each round's emails/s and the ratio B / A, then the median ratio and the mean emails/s
of each side, and writes them to ``bench/results/ab-A-B.json``. This machine's speed drifts by
a third within minutes, so figures from runs taken apart do not compare code; these do (and so
does the ``paired`` part against the aiosmtplib ceiling).

Each side runs its own committed revision's ``bench/run --parts e2e`` and worker (uncommitted
changes are in neither), with this checkout's virtualenv (so a revision that needs other
dependencies is not comparable this way). The worktrees live in a temporary directory and are
removed at the end. CI runs one tiny round of a revision against itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def _worktree(revision: str, path: Path) -> None:
    _git("worktree", "add", "--detach", "--force", str(path), revision)
    (path / ".venv").symlink_to(ROOT / ".venv")


def _emails_per_s(tree: Path, name: str, events: int) -> float:
    """One end-to-end run in ``tree``: emails/s from its results JSON."""
    done = subprocess.run(
        ["bench/run", "--parts", "e2e", "--events", str(events), "--name", name],
        cwd=tree,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"bench/run failed in {tree} (exit {done.returncode})")
    results = json.loads((tree / "bench" / "results" / f"{name}.json").read_text())
    return float(results["results"]["e2e"]["emails_per_s"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="the baseline revision (any git revision)")
    p.add_argument("b", help="the revision compared with it")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--events", type=int, default=20_000)
    args = p.parse_args(argv)
    a, b = _git("rev-parse", "--short", args.a), _git("rev-parse", "--short", args.b)
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        trees = {"a": Path(tmp) / "a", "b": Path(tmp) / "b"}  # by side: a and b may be equal
        try:
            _worktree(a, trees["a"])
            _worktree(b, trees["b"])
            for i in range(1, args.rounds + 1):
                result: dict[str, Any] = {
                    side: _emails_per_s(tree, f"ab-{side}-{i}", args.events)
                    for side, tree in trees.items()
                }
                # 0: a run so short that it ended before its sending could be timed
                timed = result["a"] > 0 and result["b"] > 0
                result["ratio"] = round(result["b"] / result["a"], 3) if timed else None
                rounds.append(result)
                ratio = f"{result['ratio']:.2f}x" if timed else "too short to time"
                print(
                    f"round {i}: {a} {result['a']:,.0f}, {b} {result['b']:,.0f} emails/s: {ratio}",
                    flush=True,
                )
        finally:
            for tree in trees.values():
                if tree.exists():
                    _git("worktree", "remove", "--force", str(tree))
    timed = [r for r in rounds if r["ratio"] is not None]
    ratios = [r["ratio"] for r in timed]
    averaged = timed or rounds
    summary = {
        "a": a,
        "b": b,
        "events": args.events,
        "rounds": rounds,
        "median_ratio": statistics.median(ratios) if ratios else None,
        "mean_emails_per_s": {
            side: round(statistics.fmean(r[side] for r in averaged), 1) for side in ("a", "b")
        },
    }
    means = summary["mean_emails_per_s"]
    median = f"median {summary['median_ratio']:.2f}x" if ratios else "no ratio"
    print(
        f"{b} / {a}: {median} over {len(ratios)} of {len(rounds)} rounds timed;"
        f" means {means['b']:,.0f} and {means['a']:,.0f} emails/s"
    )
    out = ROOT / "bench" / "results" / f"ab-{a}-{b}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
