"""ELECTRA pretraining: a transformers generator and discriminator with shared embeddings.

- The generator is ``ElectraForMaskedLM``, the discriminator ``ElectraForPreTraining``; the
  discriminator uses the generator's embeddings module (word, position and type embeddings and the
  embedding LayerNorm), and the generator's output layer stays tied to those word embeddings.
  ``check_tying`` verifies the sharing by storage, not by value.
- The generator head runs on the masked slots only (gathered hidden states): full-vocabulary logits
  at every position would cost ~0.35 TFLOP and >1 GB per 128×128 step for nothing.
- Replacements are sampled by Gumbel-max at the preset's temperature (1, the reference's, for all
  but ``tiny``) in fp32 (fp16 noise gives NaN), without gradient; a sampled token equal to the
  original counts as "original" for the discriminator.
- loss = generator MLM loss (masked slots) + disc_weight × discriminator BCE (all non-pad tokens).
- ``attention_init="local"`` (the ``tiny`` preset) starts attention on nearby tokens; the model's
  architecture and exported files stay those of transformers' ELECTRA (``local_attention_init``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from electra_ray.config import ModelConfig
from electra_ray.model.masking import Masks, apply_masks


def hf_configs(cfg: ModelConfig):
    """(generator ElectraConfig, discriminator ElectraConfig)."""
    from transformers import ElectraConfig

    common = dict(
        vocab_size=cfg.vocab_size,
        embedding_size=cfg.embedding_size,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        layer_norm_eps=cfg.layer_norm_eps,
        initializer_range=cfg.initializer_range,
        pad_token_id=cfg.pad_token_id,
        hidden_act="gelu",
        tokenizer_class="BertJapaneseTokenizer",
    )
    gen = ElectraConfig(
        hidden_size=cfg.gen_hidden_size,
        num_hidden_layers=cfg.gen_num_layers,
        num_attention_heads=cfg.gen_num_heads,
        intermediate_size=cfg.gen_intermediate_size,
        architectures=["ElectraForMaskedLM"],
        **common,
    )
    disc = ElectraConfig(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        architectures=["ElectraForPreTraining"],
        **common,
    )
    return gen, disc


# the step's metric sums, in the order of StepOutput.metrics()
METRIC_NAMES = (
    "gen_loss_sum",
    "n_masked",
    "disc_loss_sum",
    "n_tokens",
    "gen_correct",
    "disc_correct",
    "replaced",
    "replaced_found",
)


@dataclass
class StepOutput:
    loss: torch.Tensor
    gen_loss: torch.Tensor
    disc_loss: torch.Tensor
    gen_loss_sum: torch.Tensor
    disc_loss_sum: torch.Tensor
    # sums and counts for metrics, kept on the device (no host sync in the step)
    gen_correct: torch.Tensor
    n_masked: torch.Tensor
    disc_correct: torch.Tensor
    n_tokens: torch.Tensor
    replaced: torch.Tensor
    replaced_found: torch.Tensor

    def metrics(self) -> torch.Tensor:
        """The metric sums as one float64 vector on the device (METRIC_NAMES order)."""
        return metric_sums(self)


def metric_sums(out: StepOutput | GeneratorOutput | DiscriminatorOutput) -> torch.Tensor:
    """METRIC_NAMES sums of a step's output as one float64 vector; of one half's output (the fast
    step's ``overlap``), the other half's entries are 0, so the halves' vectors add up to the step's."""
    ref = out.n_masked if hasattr(out, "n_masked") else out.n_tokens
    zero = torch.zeros((), dtype=torch.float64, device=ref.device)
    return torch.stack([getattr(out, n).double() if hasattr(out, n) else zero for n in METRIC_NAMES])


@dataclass
class GeneratorOutput:
    gen_loss: torch.Tensor
    gen_loss_sum: torch.Tensor
    n_masked: torch.Tensor
    gen_correct: torch.Tensor
    disc_input: torch.Tensor  # the sampled replacements in place (no gradient)
    is_replaced: torch.Tensor


@dataclass
class DiscriminatorOutput:
    disc_loss: torch.Tensor
    disc_loss_sum: torch.Tensor
    n_tokens: torch.Tensor
    disc_correct: torch.Tensor
    replaced: torch.Tensor
    replaced_found: torch.Tensor


class ElectraPretrainer(nn.Module):
    """Generator + discriminator sharing embeddings; ``forward`` computes the ELECTRA loss."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        from transformers import ElectraForMaskedLM, ElectraForPreTraining

        self.cfg = cfg
        gen_cfg, disc_cfg = hf_configs(cfg)
        self.generator = ElectraForMaskedLM(gen_cfg)
        self.discriminator = ElectraForPreTraining(disc_cfg)
        self.tie()
        if cfg.attention_init == "local":
            local_attention_init(self)

    def tie(self) -> None:
        """Share the embeddings module and re-tie the generator's output layer to its word embeddings."""
        self.discriminator.electra.embeddings = self.generator.electra.embeddings
        self.generator.generator_lm_head.weight = self.generator.electra.embeddings.word_embeddings.weight

    def check_tying(self) -> None:
        """Raise unless the sharing holds by storage (after construction, .to(device), loading…)."""
        g, d = self.generator, self.discriminator
        ge, de = g.electra.embeddings, d.electra.embeddings
        pairs = {
            "word embeddings": (ge.word_embeddings.weight, de.word_embeddings.weight),
            "position embeddings": (ge.position_embeddings.weight, de.position_embeddings.weight),
            "type embeddings": (ge.token_type_embeddings.weight, de.token_type_embeddings.weight),
            "embedding LayerNorm": (ge.LayerNorm.weight, de.LayerNorm.weight),
            "generator output layer": (g.generator_lm_head.weight, ge.word_embeddings.weight),
        }
        for what, (a, b) in pairs.items():
            if a.data_ptr() != b.data_ptr():
                raise RuntimeError(f"{what} are not shared (different storage): the model is untied")

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        masks: Masks,
        mask_id: int,
        generator: torch.Generator | None = None,
        gen_denominator: torch.Tensor | float | None = None,
        disc_denominator: torch.Tensor | float | None = None,
    ) -> StepOutput:
        """The ELECTRA loss of a (micro-)batch.

        The losses are sums divided by ``gen_denominator`` (masked slots) and ``disc_denominator``
        (real tokens), by default this batch's own counts. A distributed step passes the counts of
        the *global* batch, so micro-batches and workers add up to exactly the global-batch mean.
        """
        g = self.generate(
            input_ids, token_type_ids, attention_mask, masks, mask_id, generator, gen_denominator
        )
        d = self.discriminate(g.disc_input, g.is_replaced, token_type_ids, attention_mask, disc_denominator)
        return StepOutput(
            g.gen_loss + self.cfg.disc_weight * d.disc_loss,
            g.gen_loss,
            d.disc_loss,
            g.gen_loss_sum,
            d.disc_loss_sum,
            g.gen_correct,
            g.n_masked,
            d.disc_correct,
            d.n_tokens,
            d.replaced,
            d.replaced_found,
        )

    def generate(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        masks: Masks,
        mask_id: int,
        generator: torch.Generator | None = None,
        gen_denominator: torch.Tensor | float | None = None,
    ) -> GeneratorOutput:
        """The generator's half of ``forward``: its loss on the masked slots and the sampled
        discriminator input (no gradient flows from the samples: the halves' backward passes are
        independent, which lets the fast step run them side by side)."""
        cfg = self.cfg
        gen_input = apply_masks(input_ids, masks, mask_id)
        hidden = self.generator.electra(
            input_ids=gen_input, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        # generator head on the masked slots only
        idx = masks.positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1))
        slot_hidden = hidden.gather(1, idx)
        logits = self.generator.generator_lm_head(
            self.generator.generator_predictions(slot_hidden)
        )  # (B, M, V)
        labels = input_ids.gather(1, masks.positions)
        valid = masks.valid
        n_masked = valid.sum()
        token_loss = F.cross_entropy(
            logits.float().flatten(0, 1), labels.flatten(), reduction="none"
        ).view_as(labels)
        gen_loss_sum = (token_loss * valid).sum()
        gen_loss = gen_loss_sum / (n_masked.clamp(min=1) if gen_denominator is None else gen_denominator)

        with torch.no_grad():
            # Gumbel-max sampling in fp32: argmax(logits / T + G), G = -log(-log U)
            u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
            gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
            sampled = (logits.float() / cfg.temperature + gumbel).argmax(-1)
            sampled = torch.where(valid, sampled, labels)
            disc_input = input_ids.clone()
            disc_input.scatter_(1, masks.positions, sampled)
            is_replaced = (disc_input != input_ids) & attention_mask.bool()
            gen_correct = ((logits.argmax(-1) == labels) & valid).sum()
        return GeneratorOutput(
            gen_loss, gen_loss_sum.detach(), n_masked, gen_correct, disc_input, is_replaced
        )

    def discriminate(
        self,
        disc_input: torch.Tensor,
        is_replaced: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        disc_denominator: torch.Tensor | float | None = None,
    ) -> DiscriminatorOutput:
        """The discriminator's half of ``forward``: its loss over the real tokens (unweighted)."""
        disc_logits = self.discriminator(
            input_ids=disc_input, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).logits  # (B, L)
        real = attention_mask.bool()
        n_tokens = real.sum()
        bce = F.binary_cross_entropy_with_logits(disc_logits.float(), is_replaced.float(), reduction="none")
        disc_loss_sum = (bce * real).sum()
        disc_loss = disc_loss_sum / (n_tokens.clamp(min=1) if disc_denominator is None else disc_denominator)
        with torch.no_grad():
            pred = disc_logits > 0
            disc_correct = ((pred == is_replaced) & real).sum()
            replaced = is_replaced.sum()
            replaced_found = (pred & is_replaced).sum()
        return DiscriminatorOutput(
            disc_loss, disc_loss_sum.detach(), n_tokens, disc_correct, replaced, replaced_found
        )


# local_attention_init: the position table's angular frequencies (radians per token) run geometrically
# from FAST to SLOW; a position vector's norm is POSITION_NORM × a word embedding's at init; query
# (= key) weights give each layer's queries components of about QUERY_SCALE
LOCAL_FAST, LOCAL_SLOW, POSITION_NORM, QUERY_SCALE = 1.0, 0.01, 2.5, 1.3


@torch.no_grad()
def local_attention_init(model: ElectraPretrainer) -> None:
    """Initialise so that attention starts on nearby tokens, in the unchanged transformers model.

    With the reference init (normal, small std) a small model's attention starts uniform over the
    sequence and, on a small corpus, stays uniform for thousands of steps: the discriminator then
    never sees its neighbours and sits at the all-"original" baseline (benchmarks/disc_probe.py
    measures it). Here the shared position table holds sinusoids, p_i = a·(cos ω_k i, sin ω_k i),
    so p_i·p_j = a²·Σ_k cos ω_k (i − j) peaks at i = j and falls off within a few tokens; position
    vectors are POSITION_NORM times longer than word vectors, so they dominate the first layer's
    input; and in every layer of both networks the key weights start as a copy of the query
    weights, so a query scores keys by their similarity to it (q_i·k_j = h_i·WᵀW·h_j). The query
    std is scaled to the layer's input (the projected embeddings in layer 0, LayerNorm outputs
    after) so that scores span a few units. Training then moves every weight freely: this is only
    where it starts. The tiny preset uses it with initializer_range 0.08 and no dropout.
    """
    cfg = model.cfg
    table = model.generator.electra.embeddings.position_embeddings.weight  # shared with the discriminator
    n_pos, width = table.shape
    half = width // 2
    omega = torch.logspace(math.log10(LOCAL_FAST), math.log10(LOCAL_SLOW), half, dtype=torch.float64)
    angle = torch.arange(n_pos, dtype=torch.float64)[:, None] * omega[None, :]
    # a word vector's norm at init is initializer_range·√width; a position vector's is amplitude·√half
    amplitude = POSITION_NORM * cfg.initializer_range * math.sqrt(width / half)
    sinus = torch.zeros(n_pos, width, dtype=torch.float64)
    sinus[:, :half] = torch.cos(angle)
    sinus[:, half : 2 * half] = torch.sin(angle)
    table.copy_((amplitude * sinus).to(table.dtype))
    for net in (model.generator, model.discriminator):
        hidden = net.config.hidden_size
        projected = hasattr(net.electra, "embeddings_project")
        for i, layer in enumerate(net.electra.encoder.layer):
            # the norm of the layer's input vectors: LayerNorm outputs (√hidden), or in layer 0 behind
            # the embedding projection, LayerNorm outputs (√width) times a normal(initializer_range) matrix
            norm = math.sqrt(hidden) * (
                cfg.initializer_range * math.sqrt(width) if i == 0 and projected else 1.0
            )
            attn = layer.attention.self
            attn.query.weight.normal_(0.0, QUERY_SCALE / norm)
            attn.key.weight.copy_(attn.query.weight)
            attn.query.bias.zero_()
            attn.key.bias.zero_()


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward ≈ 3 × forward), both networks, generator head on
    masked slots only: 6 × (non-embedding parameters) + attention score/value terms."""

    def encoder(d: int, layers: int, ffn: int) -> float:
        params = layers * (4 * d * d + 2 * d * ffn)
        attn = layers * 2 * seq_len * d  # QK^T and AV per token
        return 6 * params + 6 * attn

    gen = encoder(cfg.gen_hidden_size, cfg.gen_num_layers, cfg.gen_intermediate_size)
    gen += 6 * cfg.embedding_size * cfg.gen_hidden_size  # embedding projection
    head = (
        6 * (cfg.gen_hidden_size * cfg.embedding_size + cfg.embedding_size * cfg.vocab_size) * cfg.mask_prob
    )
    disc = encoder(cfg.hidden_size, cfg.num_layers, cfg.intermediate_size)
    disc += 6 * (cfg.embedding_size * cfg.hidden_size + cfg.hidden_size * cfg.hidden_size + cfg.hidden_size)
    return gen + head + disc
