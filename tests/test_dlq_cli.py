"""``python -m worker dlq list`` against a real broker: what it prints of a dead letter's
headers is safe to read in a terminal."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from tests.conftest import MakeTopic, Produce
from tests.test_settings import clean_environ  # the settings tests own the variable list

ROOT = Path(__file__).resolve().parent.parent

# what a relay's reply can bring into error.message: an address and a number, escape
# sequences that clear the screen and retitle the terminal, and a right-to-left override
HOSTILE_MESSAGE = (
    "550 5.1.1 <lan.nguyen@example.com>\x1b[2J\x1b]0;pwned\x07 unknown;"
    " SMS to +84901234567 \u202efdp.eciovni"
).encode()


async def test_dlq_list_prints_error_messages_masked_and_without_control_characters(
    kafka_bootstrap: str, new_topic: MakeTopic, produce: Produce
) -> None:
    """A dead letter's error.message and reason are printed with contacts masked and with no
    control or bidi character left, each on its own line."""
    dead_letters = await new_topic(prefix="dlq-cli")
    await produce(
        dead_letters,
        [(b"SHP-1", b"{}")],
        headers=[
            ("error.type", b"permanent"),
            ("error.channel", b"email\x1b[8m"),
            ("error.message", HOSTILE_MESSAGE),
        ],
    )
    env = {
        **clean_environ(),
        "PYTHONIOENCODING": "utf-8",
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_DLQ_TOPIC": dead_letters,
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "worker", "dlq", "list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{dead_letters}: 1 dead letters, ")
    example = lines[1]
    assert all(char.isprintable() for char in result.stdout.replace("\n", ""))
    assert "permanent/email" in example and "[8m" in example
    assert "550 5.1.1 <l***@example.com>" in example
    assert "SMS to +84******567" in example
    assert "lan.nguyen" not in example and "901234" not in example
