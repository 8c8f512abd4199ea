"""``SelfJudge``: a causal LM used as a 0-9 judge, scored in one forward pass per item.

The judge prompt ends where the rating begins. The score is the expectation of the digit under the
softmax restricted to the ten digit tokens at that position (the released SELF-J method), so it is a
smooth value in [0, 9] and costs one forward pass with logits kept for the last position only.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.errors import ConfigError, DigitTokenError
from ..core.io import atomic_write_json
from ..core.layers import layer_outputs
from ..core.tensors import left_pad
from ..core.models import DEFAULT_POLICY, load_causal_lm, quantize_int8_dynamic
from ..core.prefix_cache import broadcast_cache, cache_argument, continuation_batch, prefix_kv
from .directory import resolve_judge_dir
from .echo_guard import EchoGuard
from .head import LengthControl, ScalarHead, ScoreMap
from .relevance import RelevanceGate, relevance_scores
from .templates import DEFAULT_TEMPLATE, JudgeTemplate, get_template, render_judge_prompt

logger = logging.getLogger(__name__)

JUDGE_CONFIG_NAME = "selfj_config.json"
# section markers of the judge templates ([Question], [Answer], [End of Answer], [Reference], ...), any case
# characters that render as nothing: removed from user text, so they can neither hide a marker from the sanitiser
# nor split one that the removal of another would join
INVISIBLE = re.compile("[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e"
                       "\u2060-\u2064\u206a-\u206f\ufeff]")
TEMPLATE_MARKERS = r"\[\s*(?:end\s+of\s+)?(?:question|answer|reference|response|instruction)\s*\]"
DIGITS = tuple(str(d) for d in range(10))
# Whether a judge trained with a length fit scores with its length trend removed when the caller leaves
# ``length_control`` unset. One default for every scoring path (best-of-n, rounds, pairs, AlpacaEval generate, the
# TRL reward, the server). Off, by measurement (docs/rlhf.md): on held-out pool questions the judge's pick without
# it has a higher GPT-4 grade (evals/results/pool_transfer.md) and its abstention a lower AURC; on the policy's own
# samples it lowers the best-of-16 gains of the default judge (evals/results/improvement_best_of_n_v4.md).
LENGTH_CONTROL_DEFAULT = False
LENGTH_CONTROL_HELP = ("Score with the log-length trend the judge was trained with removed (its selfj_config.json "
                       "length_control), so longer answers earn nothing for length alone. Unset: the library default "
                       "(selfj_rlhf.judge.self_judge.LENGTH_CONTROL_DEFAULT, off; see docs/rlhf.md).")


def resolve_length_control(requested: bool | None, length_fit, judge_name: str) -> bool:
    """The length-control setting a judge scores with: ``requested``, or the default when it is None (on only for
    a judge that has a fit). Asking for it from a judge without a fit is an error."""
    if requested is None:
        return LENGTH_CONTROL_DEFAULT and length_fit is not None
    if requested and length_fit is None:
        raise ConfigError(f"length_control: judge '{judge_name}' was not trained with a length fit")
    return bool(requested)


def digit_token_ids(tokenizer) -> list[int]:
    """Token ids of "0".."9", looked up from the tokenizer and checked to be single tokens.

    Byte-level BPE tokenizers encode a bare digit as one token. SentencePiece tokenizers prepend a
    word-boundary piece when encoding, so for those the digit's own vocabulary entry is used, provided
    it exists and decodes back to the digit.
    """
    ids = []
    for digit in DIGITS:
        encoded = tokenizer.encode(digit, add_special_tokens=False)
        if len(encoded) == 1:
            ids.append(encoded[0])
            continue
        token_id = tokenizer.convert_tokens_to_ids(digit)
        if token_id is None or token_id == tokenizer.unk_token_id or tokenizer.decode([token_id]).strip() != digit:
            raise DigitTokenError(
                f"tokenizer {type(tokenizer).__name__} has no single token for the digit '{digit}' "
                f"(it encodes as {encoded}); SELF-J scoring reads the digits 0-9 as single next tokens"
            )
        ids.append(token_id)
    if len(set(ids)) != 10:
        raise DigitTokenError(f"digit tokens are not distinct: {ids}")
    return ids


# Prefix sharing runs the shared prefix once (P tokens: the judge prompt up to the answer) instead of n times: it saves
# the factor n(P+A)/(P+nA) of the tokens (A: the mean of the rest, answer and prompt tail), but adds a forward for
# the prefix and reads a cache concatenated onto every batch. ``share_prefix="auto"`` shares when the token saving
# reaches this factor on the judge's device. CPU: from evals/results/bench_prefix.md, where savings of 1.36 and more
# ran 1.28x to 5.6x faster shared; savings of 1.15 to 1.20 ran 1.14x to 1.19x faster there, but 0.85x to 0.97x in
# earlier runs of the same 2-core machine, whose timing noise is of that size, so the factor stays above them. CUDA: the
# first GPU measurements (docs/performance.md) ran a 7B model at 0.77x for a 1.25x saving and 1.23x for 1.9x, and
# a 135M model slower at every saving (kernel launches, not tokens, bound so small a model), hence the size floor.
PREFIX_SAVING_NEEDED = {"cpu": 1.3, "cuda": 1.8}
MIN_PARAMETERS_TO_SHARE_ON_GPU = 1_000_000_000


def prefix_token_saving(n: int, prefix_tokens: int, answer_tokens: float) -> float:
    """The factor by which sharing a P-token prefix among n answers of A tokens cuts the tokens run: n(P+A)/(P+nA)."""
    return n * (prefix_tokens + answer_tokens) / (prefix_tokens + n * answer_tokens)


def token_budget_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None = None) -> list[list[int]]:
    """Indices of ``lengths`` in batches, longest first: at most ``batch_size`` items and, with ``max_batch_tokens``,
    at most that many padded tokens (items x the batch's longest item) per batch. Sorting by length keeps padding
    small; an item longer than the budget runs alone. The judge and the judge server batch by this one rule."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        fits = current is not None and len(current) < batch_size and (
            max_batch_tokens is None or (len(current) + 1) * lengths[current[0]] <= max_batch_tokens)
        if fits:
            current.append(index)
        else:
            batches.append([index])
    return batches


@dataclass
class ScoreDetails:
    """One judged item.

    Attributes:
        score: the judge's rating, always in [0, 9]: the expected digit under the softmax restricted to the ten
            digit tokens, or a scalar head's output put on the 0-9 scale by its ``ScoreMap``; with length control
            on, after the length trend is removed (see ``SelfJudge``).
        probs: that 10-way distribution (index = digit); empty for a scalar-head judge.
        digit_mass: probability the full vocabulary puts on the ten digits (format adherence); 1.0 for a
            scalar-head judge, which always answers.
        argmax: most likely digit (a scalar-head judge: the score rounded).
        truncated: whether the response was cut to fit ``max_length``.
        raw_score: before length control and the score map: the expected digit, or the head's own output.
        response_tokens: the response's length in tokens before truncation.
        length_control: whether ``score`` has the length trend removed.
        echo_floored: whether the judge's ``EchoGuard`` found the response to copy its instruction back, so that
            ``score`` is the guard's floor (``raw_score`` keeps what the model read).
    """

    score: float
    probs: list[float]
    digit_mass: float
    argmax: int
    truncated: bool = False
    raw_score: float | None = None
    response_tokens: int = 0
    length_control: bool = False
    echo_floored: bool = False


@dataclass
class EncodedItem:
    input_ids: list[int]
    truncated: bool
    prefix_length: int = 0  # tokens before the response: shared by every response to the same prompt
    response_tokens: int = 0  # before truncation


def _fp32_logits(module, args, output):
    """Forward hook of a low-precision LM head: while a judge reads its digits (``SelfJudge.fp32_readout``), the same
    logits computed in fp32; otherwise None, which keeps the module's own output."""
    if not module.selfj_fp32_logits:
        return None
    bias = None if module.bias is None else module.bias.float()
    return torch.nn.functional.linear(args[0].float(), module.weight.float(), bias)


RELEVANCE_MEMO_SIZE = 100_000  # relevance values a judge keeps (an answer's relevance depends on its head only)


class SelfJudge:
    """Score responses with a causal LM as its own judge.

    Args:
        model: a causal LM (optionally a peft model) in eval mode.
        tokenizer: its tokenizer.
        template: a ``JudgeTemplate`` or preset name (``selfj-chat``, ``selfj-original``).
        max_length: longest judge prompt in tokens; longer responses are truncated (their head kept).
        base_model: the spec the model was loaded from, recorded when the judge is saved.
        share_prefix: score the responses to one (instruction, reference) from one KV cache of their shared
            judge-prompt prefix (``"auto"``: when at least two such responses are scored together, the prefix has
            ``min_shared_prefix`` tokens or more, and the cost model says it pays: see ``PREFIX_SAVING_NEEDED``;
            ``"always"``; ``"never"``). Scores are equal to independent scoring up to float rounding (tested to
            1e-4).
        min_shared_prefix: prefix length (tokens) from which ``"auto"`` considers sharing it.
        min_prefix_saving: the token-saving factor from which ``"auto"`` shares (default: the device's
            ``PREFIX_SAVING_NEEDED``; on a GPU, models under ``MIN_PARAMETERS_TO_SHARE_ON_GPU`` never share).
        sanitize: remove the tokenizer's special-token strings (e.g. ``<|im_end|>``, which would otherwise
            close the judge's turn) and the template's section markers (``[Answer]``, ``[End of Answer]``,
            ``[Reference]``, ...) from the instruction, reference and response before rendering, so user
            text cannot fake the judge prompt's structure (see evals/results/judge_gaming.md).
        head: a ``ScalarHead`` that scores from its layers' hidden states instead of the digit logits (the
            decoder layers above it are not run).
        length_fit: a ``LengthControl`` fitted when the judge was trained (saved in ``selfj_config.json``).
        length_control: subtract the length trend of ``length_fit`` from every score.
        score_map: a scalar head's ``ScoreMap`` onto 0-9 (saved in ``selfj_config.json``). Without one, scores
            are clipped into [0, 9].
        relevance_gate: a scalar head's ``RelevanceGate``: its weight times the answer's capped relevance to the
            instruction (``selfj_rlhf.judge.relevance``, two more forwards of the base model) is added to the head's
            raw score, so an answer to another question scores low.
        echo_guard: an ``EchoGuard``: a response that copies its instruction back (word n-grams, no model) scores
            the guard's floor (``selfj_rlhf.judge.echo_guard``).
        fp32_readout: in a bf16/fp16 model, compute the LM head's logits at the score position in fp32 (bf16
            rounds logits near 20 to steps of 0.125); it costs one [batch x hidden] x [hidden x vocab] matmul.
            What it changes is measured in evals/results/bf16_batch.md.

    Text normalisation: the instruction, response and reference are stripped of surrounding whitespace (after
    ``sanitize``), so an item scores the same in-process and through every form of the judge server.
    """

    def __init__(self, model, tokenizer, template: str | JudgeTemplate = DEFAULT_TEMPLATE, max_length: int = 2048,
                 base_model: str | None = None, share_prefix: str = "auto", min_shared_prefix: int = 64,
                 min_prefix_saving: float | None = None,
                 sanitize: bool = True, head=None, length_fit=None, length_control: bool = False, score_map=None,
                 fp32_readout: bool = True, relevance_gate=None, echo_guard=None):
        if share_prefix not in ("auto", "always", "never"):
            raise ValueError(f"share_prefix must be auto, always or never, got {share_prefix!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.template = get_template(template)
        self.max_length = max_length
        self.base_model = base_model
        self.digit_ids = digit_token_ids(tokenizer)
        self._digit_index = torch.tensor(self.digit_ids, dtype=torch.long)
        self._digit_values = torch.arange(10, dtype=torch.float32)
        self._prefix_cache: dict[tuple[str, str | None, bool], tuple[list[int], list[int]]] = {}
        self.truncation_count = 0
        self.scored_tokens = 0
        self.share_prefix = share_prefix
        self.min_shared_prefix = min_shared_prefix
        self.min_prefix_saving = min_prefix_saving
        self.sanitize = sanitize
        self.head = head
        self.length_fit = length_fit
        if length_control and length_fit is None:
            raise ValueError("length_control needs a length_fit (a judge trained with one saves it)")
        self.length_control = length_control
        self.score_map = score_map
        if relevance_gate is not None and head is None:
            raise ValueError("a relevance gate belongs to a scalar-head judge")
        self.relevance_gate = relevance_gate
        self._relevance_memo: dict[tuple, float] = {}  # (instruction, answer head) -> relevance, across calls
        self.echo_guard = echo_guard
        self.fp32_readout = fp32_readout
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        low_precision = getattr(output, "weight", None) is not None and output.weight.dtype != torch.float32
        self._lm_head = output if low_precision else None
        if self._lm_head is not None and not hasattr(self._lm_head, "selfj_fp32_logits"):
            # one hook per LM head, however many judges share the model; it acts only inside _readout, so generation
            # with the same model (a policy that judges itself) keeps its own logits and cost
            self._lm_head.selfj_fp32_logits = False
            self._lm_head.register_forward_hook(_fp32_logits)
        special = sorted({t for t in getattr(tokenizer, "all_special_tokens", []) if t and len(t) > 1}, key=len,
                         reverse=True)
        self._markers = re.compile("|".join([re.escape(t) for t in special] + [TEMPLATE_MARKERS]), re.IGNORECASE)

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(cls, spec_or_dir: str = DEFAULT_POLICY, *, template: str | None = None, dtype: str = "auto",
                        device: str | None = None, max_length: int | None = None,
                        trust_remote_code: bool = False, quantize: str | None = None,
                        length_control: bool | None = None) -> "SelfJudge":
        """Load a zero-shot judge from a model spec, or a trained judge from a judge directory.

        A judge directory holds ``selfj_config.json`` (base model, template, digit ids) and either a
        peft adapter (loaded on top of the base and merged into it), a full/merged checkpoint, or, for a
        scalar-head judge, ``scalar_head.safetensors`` read on the frozen base model.
        ``length_control``: score with the length control fitted at training (True; the directory must have one),
        without it (False), or as ``LENGTH_CONTROL_DEFAULT`` says (None: on when the judge has a fit).
        ``quantize="int8"``: int8 dynamic quantization of the decoder's linear layers (CPU only; see
        evals/results/bench_cpu.md: 1.37x faster on CPU, but the ranking is lost, so only for load tests).
        """
        if quantize not in (None, "int8"):
            raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")

        judge_dir = resolve_judge_dir(spec_or_dir)
        if judge_dir is None:
            model, tokenizer = load_causal_lm(spec_or_dir, dtype=dtype, device=device,
                                              trust_remote_code=trust_remote_code)
            if quantize:
                quantize_int8_dynamic(model)
            return cls(model, tokenizer, template or DEFAULT_TEMPLATE, max_length or 2048, base_model=spec_or_dir,
                       length_control=resolve_length_control(length_control, None, spec_or_dir))
        judge_dir = judge_dir.resolve()  # one version throughout, should a new one be published meanwhile
        config = json.loads((judge_dir / JUDGE_CONFIG_NAME).read_text())
        scalar = config.get("head", {}).get("kind") == "scalar"
        has_adapter = (judge_dir / "adapter_config.json").is_file()
        if scalar or has_adapter:  # the base model named in the config, plus the adapter or head on top
            model, tokenizer = load_causal_lm(config["base_model"], dtype=dtype, device=device,
                                              trust_remote_code=trust_remote_code)
            if has_adapter:
                from peft import PeftModel

                # merged once at load: scoring then costs what the base model costs (no adapter matmuls)
                model = PeftModel.from_pretrained(model, str(judge_dir)).merge_and_unload().eval()
        else:
            model, tokenizer = load_causal_lm(str(judge_dir), dtype=dtype, device=device,
                                              trust_remote_code=trust_remote_code)
        if quantize:
            quantize_int8_dynamic(model)
        head = None
        if scalar:
            head = ScalarHead.load(judge_dir, config["head"]).to(next(model.parameters()).device)

        length_fit = LengthControl.from_dict(config["length_control"]) if config.get("length_control") else None
        score_map = ScoreMap.from_dict(config["score_map"]) if config.get("score_map") else None
        gate = RelevanceGate.from_dict(config["relevance"]) if config.get("relevance") else None
        guard = EchoGuard.from_dict(config["echo_guard"]) if config.get("echo_guard") else None
        judge = cls(model, tokenizer, template or config["template"], max_length or config.get("max_length", 2048),
                    base_model=config["base_model"], head=head, length_fit=length_fit, score_map=score_map,
                    relevance_gate=gate, echo_guard=guard,
                    length_control=resolve_length_control(length_control, length_fit, spec_or_dir))
        if judge.digit_ids != config["digit_token_ids"]:
            raise DigitTokenError(
                f"{judge_dir / JUDGE_CONFIG_NAME}: field 'digit_token_ids' {config['digit_token_ids']} does not match "
                f"the tokenizer's digits {judge.digit_ids}"
            )
        return judge

    def judge_config(self) -> dict:
        config = {"format_version": 1, "base_model": self.base_model, "template": self.template.name,
                  "digit_token_ids": self.digit_ids, "max_length": self.max_length}
        if self.head is not None:
            config["head"] = self.head.config()
        if self.length_fit is not None:
            config["length_control"] = self.length_fit.to_dict()
        if self.score_map is not None:
            config["score_map"] = self.score_map.to_dict()
        if self.relevance_gate is not None:
            config["relevance"] = self.relevance_gate.to_dict()
        if self.echo_guard is not None:
            config["echo_guard"] = self.echo_guard.to_dict()
        return config

    def save_pretrained(self, directory: str | Path, *, merge_adapter: bool = False, extra: dict | None = None) -> None:
        """Save the adapter (or the merged / full model) plus ``selfj_config.json``; a scalar-head judge saves
        only its head (the base model is frozen and named by ``base_model``)."""

        directory = Path(directory)
        if self.head is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self.head.save(directory)
            atomic_write_json(directory / JUDGE_CONFIG_NAME, {**self.judge_config(), **(extra or {})})
            return
        model = self.model
        if merge_adapter and hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        model.save_pretrained(directory, safe_serialization=True)
        if not (directory / "adapter_config.json").is_file():
            self.tokenizer.save_pretrained(directory)
        atomic_write_json(directory / JUDGE_CONFIG_NAME, {**self.judge_config(), **(extra or {})})

    # ------------------------------------------------------------------ encoding
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def clean(self, text: str) -> str:
        """User text with special-token strings, template markers and zero-width characters removed (when
        ``sanitize`` is on), and surrounding whitespace stripped (the one text normalisation of every scoring path).

        Removal repeats until nothing is left to remove: one pass over ``<|im_<|im_end|>end|>`` would leave
        ``<|im_end|>``, which the tokenizer reads as the real end of the turn. So ``clean`` is idempotent, and no
        special-token string survives it, however the pieces are nested or split by invisible characters."""
        if self.sanitize:
            previous = None
            while previous != text:
                previous = text
                text = self._markers.sub("", INVISIBLE.sub("", text))
        return text.strip()

    def _prefix_suffix_ids(self, instruction: str, reference: str | None) -> tuple[list[int], list[int]]:
        key = (instruction, reference, self.sanitize)
        cached = self._prefix_cache.get(key)
        if cached is None:
            instruction = self.clean(instruction)
            reference = None if reference is None else self.clean(reference)
            cached = self._render_ids(instruction, reference)
            # the prompt around the response may take at most three quarters of max_length: a longer instruction
            # (or reference) keeps its head, so the response keeps a quarter and a forward stays within max_length
            limit = self.max_length - self.max_length // 4
            over = len(cached[0]) + len(cached[1]) - limit
            for _ in range(4):  # decoding a cut and encoding it again can differ by a token: cut again
                if over <= 0:
                    break
                texts = {"instruction": self.tokenizer.encode(instruction, add_special_tokens=False),
                         "reference": self.tokenizer.encode(reference or "", add_special_tokens=False)}
                name = max(texts, key=lambda n: len(texts[n]))  # the longer one gives up the tokens
                if not texts[name]:
                    break  # only the template is left: nothing to cut
                shortened = self.tokenizer.decode(texts[name][:max(0, len(texts[name]) - over)])
                instruction, reference = ((shortened, reference) if name == "instruction" else (instruction, shortened))
                logger.warning("judge prompt: the %s was cut to fit max_length=%d", name, self.max_length)
                cached = self._render_ids(instruction, reference)
                over = len(cached[0]) + len(cached[1]) - limit
            if len(self._prefix_cache) > 4096:
                self._prefix_cache.clear()
            self._prefix_cache[key] = cached
        return cached

    def _render_ids(self, instruction: str, reference: str | None) -> tuple[list[int], list[int]]:
        prefix, suffix = render_judge_prompt(self.template, instruction, reference, self.tokenizer)
        # raw wrappers get the tokenizer's BOS; chat templates already spell out their special tokens
        return (self.tokenizer.encode(prefix, add_special_tokens=self.template.wrapper != "chat"),
                self.tokenizer.encode(suffix, add_special_tokens=False))

    def template_token_count(self, with_reference: bool = True) -> int:
        """Tokens the judge prompt adds around the instruction, response (and reference): its cost with empty text."""
        prefix, suffix = self._prefix_suffix_ids("", "" if with_reference else None)
        return len(prefix) + len(suffix)

    def encode(self, instruction: str, response: str, reference: str | None = None) -> EncodedItem:
        """Token ids of the judge prompt within ``max_length``: the response is truncated (its head kept); an
        instruction or reference that would leave the response less than a quarter of it is cut first."""
        for name, value in (("instruction", instruction), ("response", response)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a string, got {type(value).__name__}")
        if reference is not None and not isinstance(reference, str):
            raise TypeError(f"reference must be a string or None, got {type(reference).__name__}")
        prefix_ids, suffix_ids = self._prefix_suffix_ids(instruction, reference)
        response_ids = self.tokenizer.encode(self.clean(response), add_special_tokens=False)
        budget = max(0, self.max_length - len(prefix_ids) - len(suffix_ids))
        truncated = len(response_ids) > budget
        response_tokens = len(response_ids)
        if truncated:
            response_ids = response_ids[:budget]
        return EncodedItem(prefix_ids + response_ids + suffix_ids, truncated, len(prefix_ids), response_tokens)

    # ------------------------------------------------------------------ scoring
    def _collate(self, items: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        device = self.device
        return {name: tensor.to(device) for name, tensor in left_pad(items, pad).items()}

    def _readout(self, **forward_kwargs) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Forward one batch; return (scores [B], 10-way digit probabilities [B, 10] or None, log-mass on the
        digits [B] or None) at the last position. A scalar head stops the forward at its highest layer."""
        if self.head is not None:
            states = torch.cat([out[:, -1, :] for out in layer_outputs(self.model, self.head.layers, **forward_kwargs)],
                               dim=-1)
            return self.head(states.to(self.head.linear.weight.device)).cpu(), None, None
        if self._lm_head is not None:
            self._lm_head.selfj_fp32_logits = self.fp32_readout
        try:
            logits = self.model(**forward_kwargs, logits_to_keep=1).logits[:, -1, :].float()
        finally:
            if self._lm_head is not None:
                self._lm_head.selfj_fp32_logits = False
        digit = logits[:, self._digit_index.to(logits.device)]
        log_mass = torch.logsumexp(digit, dim=-1) - torch.logsumexp(logits, dim=-1)
        probs = torch.softmax(digit, dim=-1).cpu()
        return probs @ self._digit_values, probs, log_mass.cpu()

    def on_scale(self, value: float) -> float:
        """A raw (or length-controlled) score on 0-9: through the score map when the judge has one, else clipped."""
        if self.score_map is not None:
            return float(self.score_map.apply([value])[0])
        return min(9.0, max(0.0, value))

    def relevance(self, instructions: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Each answer's relevance to its instruction under the base model (``selfj_rlhf.judge.relevance``), on the
        cleaned texts, as the relevance gate reads it."""
        gate = self.relevance_gate
        if len(self._relevance_memo) > RELEVANCE_MEMO_SIZE:
            self._relevance_memo.clear()
        return relevance_scores(self.model, self.tokenizer, [self.clean(i) for i in instructions],
                                [self.clean(r) for r in responses], max_tokens=gate.max_tokens,
                                max_instruction_tokens=gate.max_instruction_tokens, memo=self._relevance_memo)

    def _details(self, raw: float, probs: torch.Tensor | None, log_mass: torch.Tensor | None,
                 item: EncodedItem) -> ScoreDetails:
        adjusted = float(self.length_fit.apply([raw], [item.response_tokens])[0]) if self.length_control else raw
        score = self.on_scale(adjusted)
        common = dict(score=score, truncated=item.truncated, raw_score=raw, response_tokens=item.response_tokens,
                      length_control=self.length_control)
        if probs is None:
            return ScoreDetails(probs=[], digit_mass=1.0, argmax=round(score), **common)
        return ScoreDetails(probs=probs.tolist(), digit_mass=float(log_mass.exp()), argmax=int(probs.argmax()),
                            **common)

    def score_details(self, instructions: Sequence[str], responses: Sequence[str],
                      references: Sequence[str | None] | None = None, batch_size: int = 8,
                      progress: bool = False, max_batch_tokens: int | None = None) -> list[ScoreDetails]:
        """Score each (instruction, response[, reference]) and return the full ``ScoreDetails``.

        Batches hold at most ``batch_size`` items and, with ``max_batch_tokens``, at most that many padded tokens
        (``token_budget_batches``): on a GPU a token budget keeps long answers from running out of memory and short
        ones from running in small batches. Scores do not depend on the batching (left padding, explicit positions).
        """
        if len(instructions) != len(responses):
            raise ValueError(f"{len(instructions)} instructions but {len(responses)} responses")
        if references is not None and len(references) != len(responses):
            raise ValueError(f"{len(references)} references but {len(responses)} responses")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        refs = references if references is not None else [None] * len(responses)
        encoded = []
        for index, (instruction, response, reference) in enumerate(zip(instructions, responses, refs)):
            try:
                encoded.append(self.encode(instruction, response, reference))
            except TypeError as err:
                raise TypeError(f"item {index}: {err}") from None
        truncated = sum(e.truncated for e in encoded)
        if truncated:
            self.truncation_count += truncated
            logger.warning("%d of %d responses truncated to fit max_length=%d", truncated, len(encoded),
                           self.max_length)
        groups = self._shared_prefix_groups(instructions, refs, encoded)
        shared = {i for group in groups for i in group}
        alone = [i for i in range(len(encoded)) if i not in shared]
        results: list[ScoreDetails | None] = [None] * len(encoded)
        work = [("batch", [alone[k] for k in batch]) for batch in
                token_budget_batches([len(encoded[i].input_ids) for i in alone], batch_size, max_batch_tokens)]
        work += [("group", group) for group in groups]
        if progress:
            from tqdm.auto import tqdm

            work = tqdm(work, desc="judge", unit="batch")
        gated = (self.relevance_gate.apply(self.relevance(instructions, responses)) if self.relevance_gate is not None
                 else np.zeros(len(encoded)))
        with torch.inference_mode():
            for kind, indices in work:
                if kind == "batch":
                    batch = self._collate([encoded[i].input_ids for i in indices])
                    self.scored_tokens += int(batch["attention_mask"].sum())
                    outputs = [(indices, *self._readout(**batch, use_cache=False))]
                else:
                    outputs = self._shared_prefix_readouts([encoded[i] for i in indices], indices, batch_size,
                                                           max_batch_tokens)
                for rows, scores, probs, log_mass in outputs:
                    for row, index in enumerate(rows):
                        results[index] = self._details(float(scores[row]) + float(gated[index]),
                                                       None if probs is None else probs[row],
                                                       None if log_mass is None else log_mass[row], encoded[index])
        if self.echo_guard is not None:
            for index, (instruction, response) in enumerate(zip(instructions, responses)):
                if self.echo_guard.echoes(self.clean(instruction), self.clean(response)):
                    results[index] = replace(results[index], score=self.echo_guard.floor, echo_floored=True)
        return results  # type: ignore[return-value]

    def _shared_prefix_groups(self, instructions, references, encoded: list[EncodedItem]) -> list[list[int]]:
        """Indices of the items scored from a shared prefix cache, one list per (instruction, reference)."""
        if self.share_prefix == "never":
            return []
        by_prompt: dict[tuple[str, str | None], list[int]] = {}
        for index, key in enumerate(zip(instructions, references)):
            by_prompt.setdefault(key, []).append(index)
        minimum = 1 if self.share_prefix == "always" else self.min_shared_prefix
        groups = [group for group in by_prompt.values()
                  if len(group) >= 2 and encoded[group[0]].prefix_length >= minimum
                  and all(len(encoded[i].input_ids) > encoded[i].prefix_length for i in group)]
        if self.share_prefix == "auto":
            groups = [group for group in groups if self.prefix_sharing_pays(
                len(group), encoded[group[0]].prefix_length,
                sum(len(encoded[i].input_ids) - encoded[i].prefix_length for i in group) / len(group))]
        return groups

    def prefix_sharing_pays(self, n: int, prefix_tokens: int, answer_tokens: float) -> bool:
        """The cost model of ``share_prefix="auto"``: whether sharing a prefix among n answers saves time here."""
        device = self.device.type
        if device == "cuda" and self.min_prefix_saving is None and self._parameter_count < MIN_PARAMETERS_TO_SHARE_ON_GPU:
            return False
        needed = self.min_prefix_saving or PREFIX_SAVING_NEEDED.get(device, PREFIX_SAVING_NEEDED["cuda"])
        return prefix_token_saving(n, prefix_tokens, answer_tokens) >= needed

    @functools.cached_property
    def _parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @functools.cached_property
    def _cache_argument(self) -> str:
        """The forward's cache keyword (``selfj_rlhf.core.prefix_cache.cache_argument``), looked up once."""
        return cache_argument(self.model)

    def _shared_prefix_readouts(self, items: list[EncodedItem], indices: list[int], batch_size: int,
                                max_batch_tokens: int | None = None):
        """Readouts (see ``_readout``) of responses sharing one prefix (``selfj_rlhf.core.prefix_cache``): the
        prefix runs once, each left-padded batch of continuations reads its KV cache. A scalar head's forward stops
        at its highest layer, so layers above it hold no cache and need none."""
        from transformers import DynamicCache

        prefix_length = items[0].prefix_length
        device = self.device
        config = getattr(self.model, "config", None)
        prefix = torch.tensor([items[0].input_ids[:prefix_length]], device=device)
        cache = DynamicCache(config=config)
        self._readout(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True,
                      **{self._cache_argument: cache})
        self.scored_tokens += prefix_length
        kv = prefix_kv(cache)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        outputs = []
        for chunk in token_budget_batches([len(item.input_ids) for item in items], batch_size, max_batch_tokens):
            batch = continuation_batch([items[i].input_ids[prefix_length:] for i in chunk], pad, prefix_length, device)
            self.scored_tokens += int(batch["attention_mask"].sum()) - len(chunk) * prefix_length
            readout = self._readout(**batch, use_cache=True,
                                    **{self._cache_argument: broadcast_cache(kv, len(chunk), config)})
            outputs.append(([indices[i] for i in chunk], *readout))
        return outputs

    def score(self, instructions: Sequence[str], responses: Sequence[str],
              references: Sequence[str | None] | None = None, batch_size: int = 8,
              max_batch_tokens: int | None = None) -> list[float]:
        """The 0-9 rating of each response (see ``ScoreDetails.score``)."""
        return [d.score for d in self.score_details(instructions, responses, references, batch_size,
                                                    max_batch_tokens=max_batch_tokens)]

    # ------------------------------------------------------------------ TRL judge protocol
    def _group_scores(self, prompts: Sequence[str], completions: Sequence[Sequence[str]]) -> list[list[float]]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completion lists")
        flat_i = [p for p, cs in zip(prompts, completions) for _ in cs]
        flat_r = [c for cs in completions for c in cs]
        flat = self.score(flat_i, flat_r)
        out, start = [], 0
        for cs in completions:
            out.append(flat[start:start + len(cs)])
            start += len(cs)
        return out

    def judge(self, prompts: Sequence[str], completions: Sequence[Sequence[str]], shuffle_order: bool = True) -> list[int]:
        """Pairwise judge protocol (TRL ``BasePairwiseJudge.judge``): index of the preferred completion.

        Pointwise scores have no position bias, so ``shuffle_order`` only decides how exact ties are broken
        (at random when True, first index when False).
        """
        return [ranking[0] for ranking in self.rank(prompts, completions, shuffle_order)]

    def rank(self, prompts: Sequence[str], completions: Sequence[Sequence[str]], shuffle_order: bool = True) -> list[list[int]]:
        """Rank judge protocol (TRL ``BaseRankJudge.judge``): completion indices, best first."""
        rankings = []
        for scores in self._group_scores(prompts, completions):
            tiebreak = random.sample(range(len(scores)), len(scores)) if shuffle_order else list(range(len(scores)))
            rankings.append(sorted(range(len(scores)), key=lambda i: (-scores[i], tiebreak[i])))
        return rankings
