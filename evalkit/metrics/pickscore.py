"""PickScore (Kirstain et al., "Pick-a-Pic", NeurIPS 2023): a CLIP ViT-H/14 fine-tuned on human preferences.
Prompt metric: per (image, prompt), higher is better; also as ``pickscore_drop`` (bf16's minus the backend's).

Reference scoring code: yuvalkirstain/PickScore README.md "Inference with PickScore" (L45-100; also
trainer/scripts/eval_preference_predictor.py L18-49):

    image_embs = model.get_image_features(**image_inputs); image_embs /= ||image_embs||
    text_embs  = model.get_text_features(**text_inputs);   text_embs  /= ||text_embs||
    scores = model.logit_scale.exp() * (text_embs @ image_embs.T)[0]

so PickScore = exp(logit_scale) · cos(E_image, E_text), unclamped (the learnt scale is ~100). The README's optional
softmax over the candidate images of one prompt is a ranking, not a per-image score, and is not applied.

Preprocessing and tokens are those of laion/CLIP-ViT-H-14-laion2B-s32B-b79K's processor, which evalkit's CLIP code
reproduces without torchvision (evalkit.metrics.clip_score.ClipScorer): shortest side to 224 with PIL bicubic,
centre crop 224, OpenAI mean/std; CLIP BPE, prompts over 77 tokens cut keeping the end-of-text token (the
README's `truncation=True, max_length=77` keeps it too), pooled at that token. Scores are computed in float64 from
the fp32 embeddings. Weights: the yuvalkirstain/PickScore_v1 folder (a transformers CLIPModel), via
``--metric-weights pickscore=PATH`` or the local Hugging Face cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from evalkit.metrics.user_weights import UserWeightsPromptMetric, transformers_folder_files


class PickScoreMetric(UserWeightsPromptMetric):
    """The registry's ``pickscore``: exp(logit_scale) · cos(image, prompt) with PickScore_v1."""

    WEIGHT_ID = "pickscore"
    MAX_TOKENS = 77
    IMPL = "pickscore-1"
    DEFINITION = "exp(logit_scale) * cos(image embedding, prompt embedding), PickScore_v1 (README inference code)"
    TRUNCATION = "first 76 CLIP tokens plus the end-of-text token"
    FLAG_NOTE = "prompt truncated to 77 tokens"

    @classmethod
    def weight_files(cls, path: Path) -> list[Path]:
        return transformers_folder_files(path, cls.WEIGHT_ID)

    def _load(self, path: Path, device: str) -> None:
        from evalkit.metrics.clip_score import ClipScorer

        self.scorer = ClipScorer(str(path), device=device, batch_size=self.batch_size)
        # The learnt temperature, as the README applies it: logit_scale.exp() (no clamp at 100).
        self.scale = float(self.scorer.model.logit_scale.detach().double().exp().cpu())

    def _score(self, images: Sequence[Any], prompts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        res = self.scorer.score(list(images), list(prompts))
        return self.scale * res.cosine, [t.truncated for t in res.tokens]


__all__ = ["PickScoreMetric"]
