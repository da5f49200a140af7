"""Prototype worker: ``python -m bench.prototype run`` is ``python -m worker run`` with some of
the proposed changes patched in at start-up, to measure their end-to-end gain without
touching ``worker/``. ``BENCH_PATCHES`` (comma-separated) picks them:

- ``sniffio``: make httpcore's per-request ``import sniffio`` fail fast (the venv has no
  sniffio, so every SMS pays several failed imports that scan ``sys.path``);
- ``locale_cache``: memoise the Babel ``Locale`` parsed for every render;
- ``fastlog``: structlog renders JSON straight to stderr instead of through stdlib logging;
- ``uvloop``: run the event loop on uvloop.

A patch whose target no longer exists in the worker is skipped and said so on stderr.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

import structlog


def replace(owner: Any, name: str, value: Any) -> None:
    """Swap one attribute (or mapping entry) of the worker or a library for the prototype's."""
    if isinstance(owner, dict):
        owner[name] = value
    else:
        setattr(owner, name, value)


def patch_sniffio() -> None:
    replace(sys.modules, "sniffio", None)  # `import sniffio` then fails at once


def patch_locale_cache() -> None:
    from worker import render

    replace(render, "_babel_locale", functools.lru_cache(maxsize=256)(render._babel_locale))


class _NamedWriteLogger(structlog.WriteLogger):
    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


def patch_fastlog() -> None:
    from worker import logs

    original = logs.configure

    def configure(settings: Any) -> None:
        original(settings)  # keeps the stdlib handler for aiokafka & co
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(ensure_ascii=False),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(
                logging.getLevelName(str(settings.level))
            ),
            logger_factory=lambda *args: _NamedWriteLogger(sys.stderr, args[0] if args else ""),
            cache_logger_on_first_use=True,
        )

    logs.configure = configure


def patch_uvloop() -> None:
    import uvloop

    uvloop.install()


PATCHES: dict[str, Callable[[], None]] = {
    "sniffio": patch_sniffio,
    "locale_cache": patch_locale_cache,
    "fastlog": patch_fastlog,
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
