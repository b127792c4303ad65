"""Run in a process forked from the generate stage's worker forkserver (tests/test_generate_tokenizers.py): reports
which tokenizers that process started with, i.e. what its forkserver loaded before forking."""

from typing import Any


def loaded_tokenizers(queue: Any) -> None:
    from evalkit.generate.worker import tokenizers

    queue.put(sorted(name for _, name in tokenizers._LOADED))
