"""Prototype worker: ``python -m bench.prototype run`` is ``python -m worker run`` with some of
the proposed changes patched in at start-up, to measure their end-to-end gain without
touching ``worker/``. ``BENCH_PATCHES`` (comma-separated) picks them:

- ``uvloop``: run the event loop on uvloop.

Proposals measured here earlier and since adopted by the worker (so no longer patches):
Babel locales cached, structlog straight to stderr, and (with httpx gone) the failed
``import sniffio`` per SMS. A patch whose target no longer exists in the worker is skipped and
said so on stderr.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any


def replace(owner: Any, name: str, value: Any) -> None:
    """Swap one attribute (or mapping entry) of the worker or a library for the prototype's."""
    if isinstance(owner, dict):
        owner[name] = value
    else:
        setattr(owner, name, value)


def patch_uvloop() -> None:
    import uvloop

    uvloop.install()


PATCHES: dict[str, Callable[[], None]] = {
    "uvloop": patch_uvloop,
}


def apply(names: list[str]) -> dict[str, str]:
    """Apply each named patch; say which applied and why the others did not."""
    applied: dict[str, str] = {}
    for name in names:
        try:
            PATCHES[name]()
        except (ImportError, AttributeError, KeyError) as exc:
            applied[name] = f"skipped: {exc!r}"
        else:
            applied[name] = "applied"
    return applied


def main() -> int:
    names = [n for n in os.environ.get("BENCH_PATCHES", "").split(",") if n]
    applied = apply(names)
    print(json.dumps({"event": "bench_patches", "patches": applied}), file=sys.stderr, flush=True)
    from worker.cli import main as worker_main

    return worker_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
