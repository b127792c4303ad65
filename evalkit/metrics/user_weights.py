"""What the prompt metrics that read user-supplied weights share (PickScore, HPSv2.1, ImageReward): resolving the
checkpoint (evalkit.weights.user), the cache key and record fields computed from the files' SHA-256 without loading
a network, and the tokens-dropped flag.

A subclass sets WEIGHT_ID (its ``--metric-weights`` name), MAX_TOKENS, DEFINITION, IMPL, and implements
``weight_files(path)`` (the files that decide its numbers, checked to exist) and ``_load(path, device)`` /
``_score(images, prompts)``. Direction, range and label are the registry's (MetricSpec), not stated here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from evalkit.errors import MissingWeightsError
from evalkit.weights.user import USER_WEIGHTS, hash_weight_files, pinned_status, require_file, resolve_user_weights


def transformers_folder_files(folder: Path, weight_id: str) -> list[Path]:
    """The files of a transformers model folder that decide its outputs: config.json, the weights transformers
    loads (model.safetensors first, as it does; a sharded index and its shards; else pytorch_model.bin), and the
    preprocessing and tokenizer files when present."""
    if not folder.is_dir():
        raise MissingWeightsError(f"{weight_id}: {folder} is a file; --metric-weights {weight_id}=PATH must be "
                                  f"{USER_WEIGHTS[weight_id].expects}")
    files = [require_file(folder, "config.json", weight_id, "the model's config")]
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            files.append(folder / single)
            break
        if (folder / index).is_file():
            try:
                shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            except (ValueError, KeyError, AttributeError, TypeError) as e:
                raise MissingWeightsError(f"{weight_id}: {folder / index} is not a shard index "
                                          f"({type(e).__name__}: {e})") from None
            files += [folder / index] + [require_file(folder, s, weight_id, f"a shard named in {index}") for s in shards]
            break
    else:
        require_file(folder, "model.safetensors", weight_id, "no model.safetensors or pytorch_model.bin")
    for extra in ("preprocessor_config.json", "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                  "special_tokens_map.json"):
        if (folder / extra).is_file():
            files.append(folder / extra)
    return files


class UserWeightsPromptMetric:
    """Base of the registry's prompt metrics whose weights the user supplies. Per image: a value and whether the
    prompt was cut to MAX_TOKENS."""

    WEIGHT_ID: ClassVar[str]
    MAX_TOKENS: ClassVar[int]
    DEFINITION: ClassVar[str]
    IMPL: ClassVar[str]  # bump when this implementation's numbers change: part of the cache key
    FLAG_COUNT = "n_truncated_prompts"
    FLAG_NOTE: ClassVar[str]  # per_image.csv's note for a truncated prompt
    TRUNCATION: ClassVar[str] = ""  # how prompts are cut, for the record

    @classmethod
    def weight_files(cls, path: Path) -> list[Path]:
        raise NotImplementedError

    @classmethod
    def _resolved(cls, metric_weights: Mapping[str, str] | None) -> tuple[Path, str, dict[str, str]]:
        path, origin = resolve_user_weights(cls.WEIGHT_ID, metric_weights)
        return path, origin, hash_weight_files(cls.WEIGHT_ID, cls.weight_files(path))

    @classmethod
    def result_key(cls, metric_weights: Mapping[str, str] | None = None) -> str:
        """Cache key of the values: the files' SHA-256 (content, not place), the implementation, METRICS_VERSION.
        Raises MissingWeightsError without weights (the stage then skips the metric with that reason)."""
        from evalkit.metrics.registry import METRICS_VERSION

        _path, _origin, hashes = cls._resolved(metric_weights)
        blob = json.dumps([cls.__name__, cls.IMPL, METRICS_VERSION, sorted(hashes.items())]).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @classmethod
    def describe(cls, metric_weights: Mapping[str, str] | None = None) -> dict[str, Any]:
        """What every record states: the checkpoint, each file's SHA-256 (so a number can be reproduced), the
        definition and the truncation rule."""
        path, origin, hashes = cls._resolved(metric_weights)
        return {"model": str(path) if origin == "given" else f"{origin} ({path})", "weights_sha256": hashes,
                "weights_pinned": pinned_status(cls.WEIGHT_ID, hashes), "definition": cls.DEFINITION,
                "truncation": f"prompts over {cls.MAX_TOKENS} tokens are cut ({cls.TRUNCATION})"}

    def __init__(self, device: str = "cpu", metric_weights: Mapping[str, str] | None = None,
                 batch_size: int = 16) -> None:
        path, _origin, _hashes = self._resolved(metric_weights)
        self.device = device
        self.batch_size = int(batch_size)
        self.key = self.result_key(metric_weights)
        self._load(path, device)

    def _load(self, path: Path, device: str) -> None:
        raise NotImplementedError

    def _score(self, images: Sequence[Any], prompts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        raise NotImplementedError

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        """Per image: the value (float64) and whether its prompt was truncated; in batches of batch_size."""
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        vals: list[np.ndarray] = []
        flags: list[bool] = []
        for s in range(0, len(images), self.batch_size):
            v, f = self._score(list(images[s:s + self.batch_size]), list(prompts[s:s + self.batch_size]))
            vals.append(np.asarray(v, dtype=np.float64))
            flags += [bool(x) for x in f]
        return (np.concatenate(vals) if vals else np.zeros(0)), flags


__all__ = ["UserWeightsPromptMetric", "transformers_folder_files"]
