"""Dynamic masking with static shapes, keyed to the global batch so any world size sees the same masks.

Every sequence gets ``M = round(mask_prob · L)`` slots. A slot is *valid* for the first
``n = clamp(round(mask_prob · candidates), 1, M)`` of them (0 when a row has no candidates);
candidates are the real tokens that are not [CLS]/[SEP]/[PAD]/[MASK]. A valid slot shows [MASK]
with probability ``mask_token_prob`` (0.85) and the original token otherwise (ELECTRA uses no
random replacement at this stage). Shapes never depend on the data, which keeps compiled steps and
CUDA graphs valid.

The random draws for a step come from one generator seeded by (seed, step) over the *global*
batch; a worker takes its rows. So step s masks the same positions on 1 worker or on 8. The plain
loop draws on the CPU; the fast step on CUDA draws on the GPU (same rules, other numbers), where its
batches are built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Masks:
    positions: torch.Tensor  # (B, M) int64: token positions of the slots
    valid: torch.Tensor  # (B, M) bool: the slot is really masked
    show_mask: torch.Tensor  # (B, M) bool: the slot shows [MASK] (else the original token)

    def to(self, device: torch.device | str) -> Masks:
        return Masks(self.positions.to(device), self.valid.to(device), self.show_mask.to(device))

    def rows(self, start: int, end: int) -> Masks:
        return Masks(self.positions[start:end], self.valid[start:end], self.show_mask[start:end])


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step * 7_919) % (2**63 - 1))
    return g


def draw_masks(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_ids: tuple[int, ...],
    *,
    mask_prob: float,
    mask_token_prob: float,
    max_predictions: int,
    generator: torch.Generator,
) -> Masks:
    """Masks for a (global) batch, drawn from ``generator`` on its device (the CPU for the plain
    loop; the GPU for the fast step, whose batches never leave the device)."""
    dev = generator.device
    ids = input_ids.to(dev)
    cand = attention_mask.to(dev).bool()
    for s in special_ids:
        cand &= ids != s
    b, seq_len = ids.shape
    m = min(max_predictions, seq_len)
    scores = torch.rand((b, seq_len), generator=generator, device=dev)
    show = torch.rand((b, m), generator=generator, device=dev) < mask_token_prob
    scores = torch.where(cand, scores, torch.full_like(scores, -1.0))
    positions = scores.topk(m, dim=1).indices  # candidates first (score ≥ 0), in random order
    n_cand = cand.sum(1)
    n = torch.clamp(torch.round(n_cand.float() * mask_prob).long(), min=1, max=m)
    n = torch.where(n_cand > 0, torch.minimum(n, n_cand), torch.zeros_like(n))
    valid = torch.arange(m, device=dev).unsqueeze(0) < n.unsqueeze(1)
    return Masks(positions, valid, show & valid)


def apply_masks(input_ids: torch.Tensor, masks: Masks, mask_id: int) -> torch.Tensor:
    """The generator's input: valid slots that show [MASK] get it; everything else is unchanged."""
    out = input_ids.clone()
    current = out.gather(1, masks.positions)
    out.scatter_(1, masks.positions, torch.where(masks.show_mask, torch.full_like(current, mask_id), current))
    return out


def masked_batch(
    arrays, rows, seq_len: int, pad_id: int, special_ids: tuple[int, ...], cfg, seed: int, key: int
):
    """Padded CPU tensors (input_ids, token_type_ids, attention_mask) of instance ``rows`` and their
    masks drawn from (seed, key) by ``cfg``'s masking rules (a ModelConfig): the plain loop's batch."""
    from electra_ray.train.data import build_batch

    ids, types, att = (torch.from_numpy(a) for a in build_batch(arrays, rows, seq_len, pad_id))
    masks = draw_masks(
        ids,
        att,
        special_ids,
        mask_prob=cfg.mask_prob,
        mask_token_prob=cfg.mask_token_prob,
        max_predictions=cfg.max_predictions(seq_len),
        generator=step_generator(seed, key),
    )
    return ids, types, att, masks
