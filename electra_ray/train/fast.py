"""The fast training step: compiled, static shapes, no host sync, batches built on the device.

The plain step (train/loop.py without ``--fast-step``) runs the model eagerly: about 1,700 kernel
launches per step for ``small``, so on a modern GPU the host's launch rate, not the GPU, sets the
speed. This step computes exactly the same function (same model, masking, loss, clipping and
update) and differs only in how it runs:

- ``torch.compile`` (Inductor, ``dynamic=False``) of the forward pass with its loss and metric sums
  (bf16 autocast on CUDA; attention is transformers' SDPA path); AOTAutograd compiles its
  backward. The parameters, gradients and Adam moments live in one flat buffer each (the
  parameters are views of theirs), so the optimizer update (gradient-norm clipping, the non-finite
  skip and Adam without bias correction) is one compiled function of a reduction and a fused loop
  over four tensors, with the learning rate a device tensor, so a changing rate re-records
  nothing. The backward's gradients come from ``torch.autograd.grad`` and are added to the
  accumulated ones with one foreach add, not one ``AccumulateGrad`` kernel per tensor. The update
  compiles in seconds; the per-tensor update (``flat=False``, or parameters of mixed
  dtypes) is a few foreach kernels per tensor, ~1,200 launches for ``small``, and compiling that
  (``compile_update``) took Inductor over 10 minutes on the CPU;
- shapes never depend on the data: a fixed number of masked slots per sequence
  (``model.masking``), fixed micro-batch shapes, so one compilation serves the whole run;
- on CUDA, the forward+backward of a micro-batch and the update are each captured once in a CUDA
  graph and replayed: a step is a few small copies and two replays;
- with several workers the model is not wrapped in DDP: the fast step keeps its own flat gradient
  buffer, cut into contiguous buckets of about ``bucket_mb`` in the order the backward pass
  produces their gradients (the forward graph is compiled in pieces along the same cuts, so each
  piece's backward is its own kernel sequence and the gradients arrive piece by piece). During the
  step's last micro-batch a gradient hook launches each bucket's all-reduce (asynchronous, on the
  collective's own stream) as soon as its gradients are complete, so communication overlaps the
  rest of the backward pass, as DDP's buckets do; the micro-step ends by waiting for them. On
  CUDA the collectives are captured in the graph with the kernels around them (NCCL allows it).
  ``bucket_mb=0`` instead all-reduces the whole flat gradient with one collective between the two
  replays (no overlap);
- ``overlap=True`` (the job's default for one GPU worker: ``--fast-overlap``; ``bench_train.py
  --variants overlap``) compiles the generator's and the discriminator's halves apart and runs the
  generator's backward on a side stream beside the discriminator's forward and backward (their
  backward passes share nothing): 1.10× for ``small`` on an H200;
- ``fuse_linears=True`` (``--fast-fuse-linears on``, ``bench_train.py --variants overlap+fused``;
  not the job's default: it waits for a GPU measurement) compiles each attention layer's query,
  key and value projections as one linear layer over their concatenated weights
  (``graph_passes.py``): 6 fewer GEMMs per layer and step (2 forward, 4 backward), 144 for
  ``small``;
- the metric sums accumulate in a device buffer that the loop reads every ``log_every`` steps;
- the token ids live on the device (``DeviceInstances``, the corpus as uint16 ≈ 1.5 GB for all of
  Japanese Wikipedia); a batch is gathered and masked there from a per-epoch permutation uploaded
  once, so no per-step host→device copy and no pageable-memory synchronisation. The next step's
  batch is built on a side stream while the current step runs (``BatchesAhead``).

Randomness is keyed like the plain loop's (dropout and Gumbel noise seeded by (seed, data batch,
micro-batch) before each micro-step; masks from (seed, data batch) over the global batch), so a
resume is exact on the same kind of device. Compiled kernels draw their random numbers
differently from eager ones: the fast and the plain step agree to float tolerance on a fixed batch
when Inductor's ``fallback_random`` is set (what the tests do), not bit for bit.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from electra_ray.model.electra import METRIC_NAMES, metric_sums
from electra_ray.model.masking import Masks, draw_masks, step_generator
from electra_ray.train.data import InstanceArrays, batch_position, epoch_order
from electra_ray.train.optim import adam_update

PEAK_FLOPS = {  # dense bf16/fp16 tensor-core peaks per GPU, for MFU
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 125e12,
    "A10": 125e12,
    "V100": 125e12,
    "T4": 65e12,
}


def peak_flops(device) -> float | None:
    """The device's peak FLOP/s (None on CPU or an unknown GPU: MFU is then not reported)."""
    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_FLOPS.items():
        if key in name:
            return value
    return None


def bf16_autocast(device: torch.device) -> bool:
    """bf16 autocast on GPUs that compute in bf16 (compute capability 8.0 and up: A100, A10G, L4,
    H100, …). Older GPUs (V100, T4) only emulate it and Triton does not compile it for them: those
    train in fp32."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def describe_device(device: torch.device) -> str:
    """``CPU``, or the GPU's name and compute capability, for the workers' notes and errors."""
    if device.type != "cuda":
        return device.type.upper()
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"


# torch.compile's GPU code is Triton's, which needs compute capability 7.0 (V100) or newer
TRITON_MIN_CAPABILITY = (7, 0)


def fast_step_enabled(setting: str, device: torch.device) -> bool:
    """``--fast-step auto`` (validated by TrainConfig) means on for the GPUs Triton compiles for
    (compute capability 7.0 or newer: V100, T4, A10G, A100, L4, H100, …), off for older ones (a
    P100: Inductor refuses them) and for the CPU."""
    if setting != "auto":
        return setting == "on"
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= TRITON_MIN_CAPABILITY


def fast_fuse_linears_enabled(setting: str) -> bool:
    """``--fast-fuse-linears auto``: off everywhere until the fused projections are measured on a
    GPU (``bench_train.py --variants overlap,overlap+fused``)."""
    return setting == "on"


def on_every_rank(flag: bool, device: torch.device, world: int) -> bool:
    """True when ``flag`` is true on every rank (one small all-reduce when ``world`` > 1): for a
    choice each worker makes from its own device that all of them must make alike. The fast step
    and the plain step's DDP exchange gradients differently, so a cluster that mixes GPUs the fast
    step cannot compile for with newer ones runs the plain step on every worker."""
    if world == 1:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def fast_overlap_enabled(setting: str, device: torch.device, world: int) -> bool:
    """``--fast-overlap auto``: the generator's backward on a side stream for one CUDA worker (1.10×
    for ``small`` on an H200). Not with several workers (the gradient buckets, whose all-reduce
    overlaps the backward pass, need one backward pass) and not on CPUs (no streams: the halves
    only lose fusions, ~6% on ``tiny``)."""
    return setting == "on" or (setting == "auto" and device.type == "cuda" and world == 1)


class DeviceInstances:
    """The instance arrays on the device, and batches gathered from them there.

    ``batch(rows)`` equals ``train.data.build_batch`` on the same rows (tested)."""

    def __init__(self, arr: InstanceArrays, device: torch.device) -> None:
        ids = np.ascontiguousarray(arr.ids)
        with warnings.catch_warnings():  # Ray's shared memory is read-only: only copied from here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            if ids.dtype == np.uint16:  # torch has few uint16 kernels: keep 2 bytes, widen on gather
                self.ids = torch.from_numpy(ids.view(np.int16)).to(device)
                self.widen = 0xFFFF
            else:
                self.ids = torch.from_numpy(ids.astype(np.int32)).to(device)
                self.widen = None
            self.offsets = torch.from_numpy(np.asarray(arr.offsets, dtype=np.int64)).to(device)
            self.b_start = torch.from_numpy(np.asarray(arr.b_start, dtype=np.int64)).to(device)
        self.device = device
        self._epoch: tuple[int, torch.Tensor] | None = None

    def rows_of_epoch(self, epoch: int, rows: Callable[[], np.ndarray]) -> torch.Tensor:
        """The epoch's row order on the device: ``rows()`` is computed and uploaded once per epoch."""
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, torch.from_numpy(np.array(rows(), dtype=np.int64)).to(self.device))
        return self._epoch[1]

    def batch(self, rows: torch.Tensor, seq_len: int, pad_id: int):
        """(input_ids, token_type_ids, attention_mask), int64 (B, seq_len), on the device."""
        start = self.offsets[rows]
        length = (self.offsets[rows + 1] - start).clamp(max=seq_len)
        pos = torch.arange(seq_len, device=self.device)
        real = pos.unsqueeze(0) < length.unsqueeze(1)
        idx = (start.unsqueeze(1) + pos.unsqueeze(0)).clamp(max=max(self.ids.numel() - 1, 0))
        tok = self.ids[idx].long()
        if self.widen is not None:
            tok = tok & self.widen
        ids = torch.where(real, tok, torch.full_like(tok, pad_id))
        types = ((pos.unsqueeze(0) >= self.b_start[rows].unsqueeze(1)) & real).long()
        return ids, types, real.long()

    def masks(
        self, ids, att, special_ids, *, seed: int, key: int, mask_prob, mask_token_prob, max_predictions
    ):
        return draw_masks(
            ids,
            att,
            special_ids,
            mask_prob=mask_prob,
            mask_token_prob=mask_token_prob,
            max_predictions=max_predictions,
            generator=step_generator(seed, key, self.device),
        )


@dataclass
class DeviceBatch:
    """A global batch built on the device: padded tensors, masks and the loss denominators."""

    ids: torch.Tensor
    types: torch.Tensor
    att: torch.Tensor
    masks: Masks
    gen_den: torch.Tensor  # masked slots in the global batch (≥ 1), float32
    disc_den: torch.Tensor  # real tokens in the global batch (≥ 1), float32

    def tensors(self) -> tuple[torch.Tensor, ...]:
        m = self.masks
        return (
            self.ids,
            self.types,
            self.att,
            m.positions,
            m.valid,
            m.show_mask,
            self.gen_den,
            self.disc_den,
        )


def device_batch(
    data: DeviceInstances, rows: torch.Tensor, seq_len: int, pad_id: int, **mask_kw
) -> DeviceBatch:
    """``data``'s rows gathered and masked on its device (``mask_kw``: ``DeviceInstances.masks``'s)."""
    ids, types, att = data.batch(rows, seq_len, pad_id)
    masks = data.masks(ids, att, **mask_kw)
    return DeviceBatch(
        ids,
        types,
        att,
        masks,
        masks.valid.sum().clamp(min=1).float(),
        att.sum().clamp(min=1).float(),
    )


def data_batch_on_device(
    data: DeviceInstances,
    train_rows: np.ndarray,
    cursor: int,
    *,
    batch_size: int,
    seed: int,
    seq_len: int,
    pad_id: int,
    **mask_kw,
) -> DeviceBatch:
    """Data batch ``cursor`` of a run built on ``data``'s device: the plain loop's rows
    (``train_rows[train.data.global_rows(cursor, …)]``, from the epoch's order uploaded once per
    epoch) and its masks, drawn from (seed, cursor). ``mask_kw``: ``DeviceInstances.masks``'s other
    settings."""
    n_train = len(train_rows)
    epoch, k = batch_position(cursor, batch_size, n_train)
    order = data.rows_of_epoch(epoch, lambda: train_rows[epoch_order(n_train, seed, epoch)])
    rows = order[k * batch_size : (k + 1) * batch_size]
    return device_batch(data, rows, seq_len, pad_id, key=cursor, seed=seed, **mask_kw)


class BatchesAhead:
    """Builds the next step's batch on a side CUDA stream while the current step runs.

    ``build(key)`` makes the batch of data batch ``key`` on the device (a pure function of the key:
    rows and masks are keyed by it). ``take(key)`` returns that batch: the one built ahead by
    ``ahead(key)`` when the keys match (the main stream then waits for its build, usually long
    done), else one built now. On a GPU the batch's ~30 small gather, random and top-k kernels then
    run beside the step's graphs instead of between them, on the GPU's critical path (1.5–2.3% of
    ``small``'s step on an H200). Every batch is built on the side stream, so the device memory it
    uses (the epoch's order included) is allocated and freed there; what ``take`` hands out is
    marked as used by the main stream, so the allocator does not reuse it before the step that
    reads it has run. On a CPU there is no stream: ``ahead`` does nothing and ``take`` builds in
    line. A key that was not built ahead (the first step, a rollback, a resume) is built in line:
    the batches, hence a resume, do not depend on what was built ahead."""

    def __init__(self, build: Callable[[int], DeviceBatch], device: torch.device) -> None:
        self._build = build
        self.stream = None
        if device.type == "cuda":
            self.stream = torch.cuda.Stream(device=device)
            # what the builds read (the corpus uploaded by DeviceInstances) is on the main stream
            self.stream.wait_stream(torch.cuda.current_stream(device))
        self._ahead: tuple[int, DeviceBatch, Any] | None = None
        self.built_ahead = 0  # batches taken that were built ahead (the rest were built in line)

    def _on_side(self, key: int) -> tuple[DeviceBatch, Any]:
        assert self.stream is not None
        with torch.cuda.stream(self.stream):
            batch = self._build(key)
            done = torch.cuda.Event()
            done.record(self.stream)
        return batch, done

    def take(self, key: int) -> DeviceBatch:
        if self.stream is None:
            return self._build(key)
        if self._ahead is not None and self._ahead[0] == key:
            _, batch, done = self._ahead
            self.built_ahead += 1
        else:
            batch, done = self._on_side(key)
        self._ahead = None
        main = torch.cuda.current_stream(self.stream.device)
        main.wait_event(done)
        for t in batch.tensors():
            t.record_stream(main)
        return batch

    def ahead(self, key: int) -> None:
        """Start building batch ``key`` (nothing on a CPU)."""
        if self.stream is not None:
            self._ahead = (key, *self._on_side(key))


def wait_from_spans(spans: list[tuple[float, float, float]]) -> float:
    """Seconds a window of steps waited for data, each step given as (start, batch built, step
    done) on the device's clock in seconds: from the previous step's end (the window's first step:
    its start) to the batch being built. That is the device building batches, and sitting idle
    while the host prepares them (or does anything else between two steps). The time before the
    window's first step is not counted (it is the previous report's)."""
    if not spans:
        return 0.0
    first = spans[0][1] - spans[0][0]
    return first + sum(nxt[1] - prev[2] for prev, nxt in zip(spans, spans[1:]))


class DataWaitClock:
    """How long training waited for data in a report window.

    With the host running the step (the CPU; the plain step, whose batches are built on the host)
    it is the host's time building batches. With the fast step on a GPU the host only enqueues
    work and runs ahead of the device: its clock says nothing there (it blocks on whichever launch
    finds the queue full, often in the batch build: ~50% "waiting" on an H200 at full speed). There
    the device is timed with CUDA events (three per step): the time from one step's end to the next
    one's batch being built, which is the device building batches or sitting idle until the host
    has enqueued them (``wait_from_spans``)."""

    def __init__(self, device: torch.device, gpu_events: bool) -> None:
        self.events = gpu_events and device.type == "cuda"
        self._spans: list[tuple[Any, Any, Any]] = []
        self._t0 = 0.0
        self._host = 0.0

    def _mark(self):
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    def start(self) -> None:
        """Before the step's batch is built."""
        if self.events:
            self._spans.append((self._mark(),))
        else:
            self._t0 = time.perf_counter()

    def built(self) -> None:
        """After the batch is built (enqueued, on a GPU)."""
        if self.events:
            self._spans[-1] += (self._mark(),)
        else:
            self._host += time.perf_counter() - self._t0

    def done(self) -> None:
        """After the step (its update enqueued)."""
        if self.events:
            self._spans[-1] += (self._mark(),)

    def take(self) -> float:
        """Seconds waited for data since the last call; on a GPU it waits for the window's last
        event (the loop has just synchronised for its metrics)."""
        if not self.events:
            wait, self._host = self._host, 0.0
            return wait
        spans = [s for s in self._spans if len(s) == 3]
        self._spans = []
        if not spans:
            return 0.0
        spans[-1][2].synchronize()
        first = spans[0][0]
        return wait_from_spans([tuple(first.elapsed_time(e) / 1e3 for e in s) for s in spans])


def _forward(model, amp, mask_id, ids, types, att, positions, valid, show, gen_den, disc_den, loss_scale):
    with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if amp else nullcontext():
        out = model(
            ids,
            types,
            att,
            Masks(positions, valid, show),
            mask_id,
            generator=None,
            gen_denominator=gen_den,
            disc_denominator=disc_den,
        )
    return out.loss * loss_scale, out.metrics()


def _forward_gen(model, amp, mask_id, ids, types, att, positions, valid, show, gen_den, loss_scale):
    """The generator's half of ``_forward`` (``overlap``): its loss, the discriminator's input and
    the generator's metric sums (the discriminator's entries 0)."""
    with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if amp else nullcontext():
        g = model.generate(ids, types, att, Masks(positions, valid, show), mask_id, None, gen_den)
    return g.gen_loss * loss_scale, g.disc_input, g.is_replaced, metric_sums(g)


def _forward_disc(model, amp, disc_input, is_replaced, types, att, disc_den, loss_scale):
    """The discriminator's half of ``_forward``: disc_weight × its loss and its metric sums (the
    generator's entries 0)."""
    with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if amp else nullcontext():
        d = model.discriminate(disc_input, is_replaced, types, att, disc_den)
    return d.disc_loss * (model.cfg.disc_weight * loss_scale), metric_sums(d)


# the static inputs the generator's half (and the whole forward) reads first, in argument order
_GEN_INPUTS = ("ids", "types", "att", "positions", "valid", "show", "gen_den")


def compile_in_pieces(fn: Callable, piece_bytes: int) -> tuple[Callable, bool]:
    """``torch.compile(fn)`` with its graph cut into pieces of about ``piece_bytes`` of parameters,
    counted backwards from the output (the order in which the backward pass finishes them), each
    piece compiled by Inductor with its own backward: the gradients of a piece's parameters exist
    as soon as its backward has run, not at the end of the whole backward pass. This is what
    Dynamo does for a compiled DDP model (its ``DDPOptimizer``, used here without DDP). Returns
    (the compiled function, whether it is cut): an unknown torch that lacks it compiles whole."""
    try:
        from torch._dynamo.backends.distributed import DDPOptimizer
        from torch._dynamo.backends.registry import lookup_backend
    except ImportError:  # pragma: no cover - torch without it
        return torch.compile(fn, dynamic=False), False
    cutter = DDPOptimizer(piece_bytes, lookup_backend("inductor"), first_bucket_cap=piece_bytes)
    return torch.compile(fn, dynamic=False, backend=cutter.compile_fn), True


@torch.no_grad()
def _update(groups, lr, enable, clip_norm, betas, eps):
    """Clip by the global gradient norm, skip a non-finite step, Adam; zero the gradients."""
    grads = [g for _, gs, _, _, _ in groups for g in gs]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    coef = (clip_norm / (norm + 1e-6)).clamp(max=1.0)  # as torch.nn.utils.clip_grad_norm_
    torch._foreach_mul_(grads, coef)
    ok = torch.isfinite(norm) & enable
    for params, gs, ms, vs, wd in groups:
        adam_update(params, gs, ms, vs, lr=lr, betas=betas, eps=eps, weight_decay=wd, ok=ok)
    torch._foreach_zero_(grads)
    return norm, ok


ALIGN_BYTES = 256  # where each tensor starts in the flat buffers, as cudaMalloc aligns a tensor of its own


@torch.no_grad()
def _update_flat(flat, segments, lr, enable, clip_norm, betas, eps):
    """``_update`` on flat buffers (parameters, gradients and moments each one tensor): ~12 kernels
    per step instead of a few per parameter tensor. Same arithmetic, same skip."""
    p, g, m, v = flat
    b1, b2 = betas
    norm = torch.linalg.vector_norm(g)
    ok = torch.isfinite(norm) & enable
    okf = ok.to(g.dtype)
    coef = (clip_norm / (norm + 1e-6)).clamp(max=1.0)
    # clipped; a skipped step sees a zero gradient (its NaN/inf times 0 are NaN, hence nan_to_num)
    g.mul_(torch.where(ok, coef, torch.zeros_like(coef))).nan_to_num_(0.0, 0.0, 0.0)
    m.mul_(1 - (1 - b1) * okf).add_(g, alpha=1 - b1)
    v.mul_(1 - (1 - b2) * okf).addcmul_(g, g, value=1 - b2)
    update = m / (v.sqrt() + eps)
    for start, end, wd in segments:
        if wd:
            update[start:end].add_(p[start:end], alpha=wd)
    p.sub_(update.mul_(okf * lr))
    g.zero_()
    return norm, ok


class FastStep:
    """One optimizer step over a worker's micro-batches, compiled (and graph-captured on CUDA).

    ``model`` is the bare model (never DDP-wrapped) whose parameters ``opt`` updates. With ``world``
    > 1 ranks (or ``all_reduce=True``) the parameters are made flat, rank 0's weights are broadcast,
    and the flat gradient is summed over the ranks: in buckets of ``bucket_mb`` launched during the
    backward pass of the step's last micro-batch (the ``accum``-th ``micro_step`` call since the
    last ``step``), or, with ``bucket_mb=0`` or ``overlap``, with one collective in ``step``
    outside the captured graphs. Each rank's loss is already normalized by the global batch's
    counts. ``acc`` holds the metric sums since the last ``acc.zero_()``, ``bad`` the number of
    skipped (non-finite) steps, ``grad_norm`` the last step's gradient norm; ``launched`` lists, for
    the last all-reduced micro-batch, how many parameters' gradients had arrived when each bucket's
    all-reduce was launched (all of them: no overlap). ``buckets`` lists the buckets' ``(start,
    end)`` in the flat gradient, ``bucket_of`` maps ``id(parameter)`` to its bucket's index.

    ``reduce_dtype`` (e.g. ``torch.bfloat16``): the gradient is summed over the ranks in that dtype
    (half the bytes on the wire; the sum rounded to it), through a buffer of its own.

    ``flat`` (the default; required with ``world`` > 1) moves the parameters, gradients and Adam
    moments into one buffer each (the parameters become views of it, in the optimizer's group
    order), so the update is one compiled function over four tensors; state dicts, checkpoints and
    tying are unchanged. ``flat=False`` keeps the per-tensor foreach update (what
    ``bench_train.py --variants pertensor`` measures).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        opt: torch.optim.Optimizer,
        *,
        device: torch.device,
        micro: int,
        seq_len: int,
        slots: int,
        mask_id: int,
        clip_norm: float,
        compile: bool = True,
        compile_update: bool = False,
        graphs: bool | None = None,
        flat: bool = True,
        world: int = 1,
        overlap: bool = False,
        all_reduce: bool | None = None,
        bucket_mb: float = 25.0,
        accum: int = 1,
        fuse_linears: bool = False,
        reduce_dtype: torch.dtype | None = None,
    ) -> None:
        self.model, self.opt, self.device = model, opt, device
        # the linear layers that read the same tensor (query, key, value) compiled as one
        self.fuser = None
        if fuse_linears and compile:
            from electra_ray.train.graph_passes import FuseSharedInputLinears  # imports Inductor

            self.fuser = FuseSharedInputLinears()
        # sum the gradients over the ranks of the default process group (a test may ask for it on one)
        self.all_reduce = world > 1 if all_reduce is None else all_reduce
        flat = flat or self.all_reduce
        if accum < 1 or bucket_mb < 0:
            raise ValueError(f"accum must be >= 1 and bucket_mb >= 0, got {accum} and {bucket_mb}")
        self.accum = accum
        self._k = 0  # micro-steps since the last step
        self.amp = bf16_autocast(device)
        self.mask_id, self.clip_norm = mask_id, clip_norm
        self.graphs = device.type == "cuda" if graphs is None else graphs
        self.acc = torch.zeros(len(METRIC_NAMES), device=device, dtype=torch.float64)
        self.bad = torch.zeros((), device=device, dtype=torch.float64)
        self.grad_norm = torch.zeros((), device=device, dtype=torch.float32)
        self.lr = torch.zeros((), device=device, dtype=torch.float32)
        self.enable = torch.ones((), device=device, dtype=torch.bool)
        z = lambda shape, dtype: torch.zeros(shape, device=device, dtype=dtype)  # noqa: E731
        self.inputs = {
            "ids": z((micro, seq_len), torch.int64),
            "types": z((micro, seq_len), torch.int64),
            "att": torch.ones((micro, seq_len), device=device, dtype=torch.int64),
            "positions": z((micro, slots), torch.int64),
            "valid": z((micro, slots), torch.bool),
            "show": z((micro, slots), torch.bool),
            "gen_den": torch.ones((), device=device, dtype=torch.float32),
            "disc_den": torch.ones((), device=device, dtype=torch.float32),
            "loss_scale": torch.ones((), device=device, dtype=torch.float32),
        }
        # gradients exist from the start and keep their storage (the update zeroes them in place)
        self._params = [p for p in model.parameters() if p.requires_grad]
        for p in self._params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.flat: tuple[torch.Tensor, ...] | None = None
        self.segments: list[tuple[int, int, float]] = []
        self._offset: dict[int, int] = {}  # a parameter's start in the flat buffers
        if flat:
            self._flatten()
        if self.all_reduce:
            if self.flat is None:
                raise ValueError(
                    "the fast step on several workers keeps parameters in one flat buffer: they must "
                    "share one dtype and device"
                )
            dist.broadcast(self.flat[0], src=0)  # every rank starts from rank 0's weights, as with DDP
        # the gradient summed over the ranks in another dtype (bf16: half the bytes on the wire),
        # through a buffer of that dtype that keeps its storage (the captured graphs read it)
        self._wire: torch.Tensor | None = None
        if self.all_reduce and reduce_dtype is not None and reduce_dtype != self.flat[1].dtype:
            self._wire = torch.zeros_like(self.flat[1], dtype=reduce_dtype)
        self.bind_optimizer_state()
        # buckets of the flat gradient all-reduced during the backward pass (not beside ``overlap``,
        # whose two backward passes would each deliver a part of the shared embeddings' gradient)
        self.buckets: list[tuple[int, int]] = []
        self.bucket_of: dict[int, int] = {}  # id(parameter) → its bucket
        self.launched: list[int] = []
        self.cut = False  # the compiled forward is cut into pieces along the buckets
        if self.all_reduce and bucket_mb > 0 and not overlap:
            self._make_buckets(int(bucket_mb * 2**20))
        if compile and len(self.buckets) > 1:
            self._fwd, self.cut = compile_in_pieces(_forward, int(bucket_mb * 2**20))
        else:
            self._fwd = torch.compile(_forward, dynamic=False) if compile else _forward
        # overlap: the generator's and the discriminator's halves compiled apart, so that on CUDA the
        # generator's backward runs on a side stream beside the discriminator's forward and backward
        self.overlap = overlap
        if overlap:
            self._fwd_gen = torch.compile(_forward_gen, dynamic=False) if compile else _forward_gen
            self._fwd_disc = torch.compile(_forward_disc, dynamic=False) if compile else _forward_disc
        self._side = torch.cuda.Stream(device) if overlap and device.type == "cuda" else None
        if self.flat is not None:  # a reduction and one fused loop: compiles in seconds
            self._upd = torch.compile(_update_flat, dynamic=False) if compile else _update_flat
        else:  # slow to compile (minutes for ~400 tensors); a CUDA graph removes its launches anyway
            self._upd = torch.compile(_update, dynamic=False) if compile_update else _update
        self._graph_upd: torch.cuda.CUDAGraph | None = None
        self._graphs: dict[bool, torch.cuda.CUDAGraph] = {}  # by "all-reduces its gradients"
        self._warm = False

    @property
    def variant(self) -> str:
        """What decides the compiled graphs (with the model, the device and torch): the name of
        their file in the run folder's compile cache (train/compile_cache.py)."""
        (micro, seq_len), slots = self.inputs["ids"].shape, self.inputs["positions"].shape[1]
        options = (
            ("pertensor", self.flat is None),
            ("overlap", self.overlap),
            ("fused", self.fuser is not None),
            (f"cut{len(self.buckets)}", self.cut),
        )
        return "-".join([f"{micro}x{seq_len}", f"{slots}slots", *(name for name, on in options if on)])

    def _flatten(self) -> None:
        """Parameters, gradients and moments as views of four flat buffers. Within each optimizer
        group the parameters are laid out backwards (the model's last layers first), the order in
        which the backward pass produces their gradients, so that a bucket (a contiguous range)
        fills early."""
        groups = [[p for p in g["params"] if p.requires_grad][::-1] for g in self.opt.param_groups]
        params = [p for g in groups for p in g]
        if len({(p.dtype, p.device) for p in params}) != 1:
            return  # mixed dtypes or devices: keep the per-tensor update
        ref = params[0]
        align = max(1, ALIGN_BYTES // ref.element_size())

        def padded(n: int) -> int:  # the room a tensor of n elements takes; the gap stays zero
            return -(-n // align) * align

        total = sum(padded(p.numel()) for p in params)
        flat = tuple(torch.zeros(total, dtype=ref.dtype, device=ref.device) for _ in range(4))
        off = 0
        for group, ps in zip(self.opt.param_groups, groups):
            start = off
            for p in ps:
                n = p.numel()
                views = [f[off : off + n].view_as(p) for f in flat]
                views[0].copy_(p.detach())
                views[1].copy_(p.grad)
                p.data = views[0]
                p.grad = views[1]
                st = self.opt.state[p]
                for k, view in zip(("exp_avg", "exp_avg_sq"), views[2:]):
                    if k in st:
                        view.copy_(st[k])
                    st[k] = view
                self._offset[id(p)] = off
                off += padded(n)
            self.segments.append((start, off, group["weight_decay"]))
        self.flat = flat

    def _make_buckets(self, cap: int) -> None:
        """Cut the flat gradient into contiguous buckets of whole tensors, about ``cap`` bytes each,
        and hook every parameter: its gradient is added to the accumulated one when its bucket is
        complete, and in the last micro-batch the bucket's all-reduce is launched then."""
        assert self.flat is not None
        size = self.flat[1].element_size()
        order = sorted(self._params, key=lambda p: self._offset[id(p)])
        start = off = 0
        for p in order:
            self.bucket_of[id(p)] = len(self.buckets)
            off = self._offset[id(p)] + p.numel()
            if (off - start) * size >= cap:
                self.buckets.append((start, off))
                start = off
        if off > start:
            self.buckets.append((start, off))
        self._expected = [0] * len(self.buckets)  # gradients a bucket waits for
        for b in self.bucket_of.values():
            self._expected[b] += 1
        self._pending: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in self.buckets]
        self._next = 0  # buckets are flushed (and launched) in index order: the same on every rank
        self._works: list[Any] = []
        self._reduce = self._collect = False
        self._seen = 0
        self._unused: set[int] = set()
        self._hooks = [p.register_hook(self._hook(p)) for p in order]

    def _hook(self, p: torch.nn.Parameter) -> Callable[[torch.Tensor], None]:
        bucket = self.bucket_of[id(p)]

        def arrived(grad: torch.Tensor) -> None:
            if not self._collect:  # a backward pass outside the fast step's micro-steps
                return None
            self._seen += 1
            self._pending[bucket].append((p.grad, grad))
            while self._next < len(self.buckets) and (
                len(self._pending[self._next]) == self._expected[self._next]
            ):
                self._flush(self._next)
            return None

        return arrived

    def _flush(self, b: int) -> None:
        """Add bucket ``b``'s gradients to the accumulated ones; in the last micro-batch, launch its
        all-reduce (asynchronous: the backward pass goes on)."""
        pending = self._pending[b]
        if pending:
            torch._foreach_add_([a for a, _ in pending], [g for _, g in pending])
            pending.clear()
        if self._reduce:
            self._works.append(self._launch(*self.buckets[b]))
            self.launched.append(self._seen)
        self._next = b + 1

    def _launch(self, start: int, end: int) -> tuple[Any, int, int]:
        """Start summing the flat gradient's ``[start, end)`` over the ranks (asynchronous); with
        ``reduce_dtype``, a copy of it in the wire buffer (``_land`` copies the sum back)."""
        assert self.flat is not None
        grad = self.flat[1][start:end]
        if self._wire is not None:
            grad = self._wire[start:end]
            grad.copy_(self.flat[1][start:end])
        return dist.all_reduce(grad, async_op=True), start, end

    def _land(self, works: list[tuple[Any, int, int]]) -> None:
        """The current stream waits for the collectives (captured on CUDA); sums made in the wire
        buffer are copied back into the flat gradient."""
        assert self.flat is not None
        for work, start, end in works:
            work.wait()
            if self._wire is not None:
                self.flat[1][start:end].copy_(self._wire[start:end])

    def bind_optimizer_state(self) -> None:
        """(Re)build the update's argument lists from the optimizer; call after loading its state
        (a rollback): graph-captured moments are copied into in place so the graphs stay valid."""
        groups = []
        old = getattr(self, "_moments", {})
        for group in self.opt.param_groups:
            params = [p for p in group["params"] if p.requires_grad]
            if not params:
                continue
            for p in params:
                st = self.opt.state[p]
                if not st:
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                if id(p) in old:  # keep the captured storage
                    for k, buf in zip(("exp_avg", "exp_avg_sq"), old[id(p)]):
                        if st[k] is not buf:
                            buf.copy_(st[k])
                            st[k] = buf
            groups.append(
                (
                    params,
                    [p.grad for p in params],
                    [self.opt.state[p]["exp_avg"] for p in params],
                    [self.opt.state[p]["exp_avg_sq"] for p in params],
                    group["weight_decay"],
                )
            )
        self._moments = {
            id(p): (self.opt.state[p]["exp_avg"], self.opt.state[p]["exp_avg_sq"])
            for g in groups
            for p in g[0]
        }
        self.groups = groups
        first = self.opt.param_groups[0]
        self.betas, self.eps = tuple(first["betas"]), first["eps"]

    # ------------------------------------------------------------------------------ the pieces
    def _micro(self, reduce: bool = False) -> None:
        """One micro-batch's forward and backward; ``reduce``: the step's last micro-batch, whose
        gradients are then summed over the ranks (by buckets during the backward pass)."""
        if self.overlap:
            self._micro_overlapped()
            return
        x = self.inputs
        batch = [x[k] for k in _GEN_INPUTS]
        loss, metrics = self._fwd(self.model, self.amp, self.mask_id, *batch, x["disc_den"], x["loss_scale"])
        if not self.buckets:
            self._add_grads(torch.autograd.grad(loss, self._params, allow_unused=True))
        else:
            self._next, self._seen, self._reduce, self._collect = 0, 0, reduce, True
            for pending in self._pending:  # left over only by a backward pass that raised
                pending.clear()
            self._works.clear()
            if reduce:
                self.launched = []
            try:
                grads = torch.autograd.grad(loss, self._params, allow_unused=True)
            finally:
                self._collect = False
            for p, g in zip(self._params, grads):
                if g is None and id(p) not in self._unused:  # its hook never runs: stop waiting for it
                    self._unused.add(id(p))
                    self._expected[self.bucket_of[id(p)]] -= 1
            while self._next < len(self.buckets):  # complete but behind an unused parameter's bucket
                self._flush(self._next)
            self._land(self._works)
            self._works.clear()
        self.acc.add_(metrics)

    def _add_grads(self, *grad_lists) -> None:
        """Adds the gradients (``torch.autograd.grad``'s tuples over ``_params``) to the accumulated
        ones with one foreach add (a few kernels on CUDA), not autograd's AccumulateGrad (one add
        kernel per parameter tensor)."""
        used = [(p.grad, g) for grads in grad_lists for p, g in zip(self._params, grads) if g is not None]
        torch._foreach_add_([a for a, _ in used], [g for _, g in used])

    def _micro_overlapped(self) -> None:
        """``_micro`` in two halves. Their backward passes share no tensors (the discriminator's
        input is sampled without gradient), so on CUDA the generator's half runs on a side stream:
        its forward, then its backward beside the discriminator's forward and backward on the main
        stream (autograd runs a backward op on its forward op's stream), joined before the gradients
        are added. Inside a CUDA graph capture the two streams become two branches of the graph.
        Both halves' gradients of the shared embeddings are added to the same accumulator."""
        x = self.inputs
        side = self._side
        main = torch.cuda.current_stream() if side is not None else None
        if side is not None:
            side.wait_stream(main)  # the inputs were written on the main stream
        with torch.cuda.stream(side) if side is not None else nullcontext():
            batch = [x[k] for k in _GEN_INPUTS]
            gen_loss, disc_input, is_replaced, gen_sums = self._fwd_gen(
                self.model, self.amp, self.mask_id, *batch, x["loss_scale"]
            )
            if side is not None:
                sampled = torch.cuda.Event()
                sampled.record(side)
            gen_grads = torch.autograd.grad(gen_loss, self._params, allow_unused=True)
            # the loss holds its graph's nodes, among them the shared embeddings' AccumulateGrad
            # node, made on the side stream: alive, the discriminator's half would reuse it, and the
            # autograd engine would sync its main-stream gradients through the side stream (on CUDA:
            # "The AccumulateGrad node's stream does not match ...")
            del gen_loss
        if side is not None:
            main.wait_event(sampled)
            for t in (disc_input, is_replaced):
                t.record_stream(main)
        disc_loss, disc_sums = self._fwd_disc(
            self.model,
            self.amp,
            disc_input,
            is_replaced,
            x["types"],
            x["att"],
            x["disc_den"],
            x["loss_scale"],
        )
        disc_grads = torch.autograd.grad(disc_loss, self._params, allow_unused=True)
        if side is not None:
            main.wait_stream(side)
            for t in (*(g for g in gen_grads if g is not None), gen_sums):
                t.record_stream(main)
        self._add_grads(gen_grads, disc_grads)
        self.acc.add_(gen_sums + disc_sums)

    def _step(self) -> None:
        hyper = (self.lr, self.enable, self.clip_norm, self.betas, self.eps)
        # the gradient tensors never change: ``_micro`` and the update write into them in place
        tensors = (self.flat, self.segments) if self.flat is not None else (self.groups,)
        norm, ok = self._upd(*tensors, *hyper)
        self.grad_norm.copy_(norm)
        self.bad.add_((~ok).double())

    def warm_up(self, iters: int = 3) -> float:
        """Compile (and capture) with the update disabled: parameters and moments stay bitwise
        as they were, the metric buffers are cleared afterwards. Returns the seconds it took."""
        t = time.perf_counter()
        self.enable.fill_(False)
        stream = torch.cuda.Stream() if self.graphs else None
        # with buckets: the micro-batch that all-reduces and, when a step has several, the other kind
        kinds = (([False] if self.accum > 1 else []) + [True]) if self.buckets else [False]
        fuse = nullcontext()
        if self.fuser is not None:
            from torch._inductor import config as inductor_config

            fuse = inductor_config.patch(pre_grad_custom_pass=self.fuser)
        with fuse, torch.cuda.stream(stream) if stream is not None else nullcontext():
            for _ in range(iters):
                for reduce in kinds:  # the collectives run once before a capture (NCCL requires it)
                    self._micro(reduce)
                self._step()
        if stream is not None:
            torch.cuda.current_stream().wait_stream(stream)
            pool = None
            for reduce in kinds:
                graph = self._graphs[reduce] = torch.cuda.CUDAGraph()
                try:
                    with torch.cuda.graph(graph, pool=pool):
                        self._micro(reduce)
                except RuntimeError as e:
                    if not reduce:
                        raise
                    raise RuntimeError(
                        f"capturing the bucketed all-reduce in a CUDA graph failed ({e}); "
                        "--allreduce-bucket-mb 0 all-reduces outside the graphs instead"
                    ) from e
                pool = graph.pool()
            self._graph_upd = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph_upd, pool=pool):
                self._step()
            torch.cuda.synchronize()
        self.enable.fill_(True)
        self.acc.zero_()
        self.bad.zero_()
        for gs in (g[1] for g in self.groups):
            torch._foreach_zero_(gs)
        self._warm = True
        return time.perf_counter() - t

    # ----------------------------------------------------------------------------- the step
    def micro_step(
        self,
        ids,
        types,
        att,
        masks: Masks,
        gen_den,
        disc_den,
        *,
        seed: int,
        scale: float = 1.0,
    ):
        """Forward + backward of one micro-batch (gradients add up until ``step``). The loss is
        multiplied by ``scale`` (NaN for the test hook)."""
        if not self._warm:
            self.warm_up()
        x = self.inputs
        x["ids"].copy_(ids, non_blocking=True)
        x["types"].copy_(types, non_blocking=True)
        x["att"].copy_(att, non_blocking=True)
        x["positions"].copy_(masks.positions, non_blocking=True)
        x["valid"].copy_(masks.valid, non_blocking=True)
        x["show"].copy_(masks.show_mask, non_blocking=True)
        x["gen_den"].copy_(gen_den, non_blocking=True)
        x["disc_den"].copy_(disc_den, non_blocking=True)
        x["loss_scale"].fill_(scale)
        self._k += 1
        if self.buckets and self._k > self.accum:
            raise RuntimeError(f"micro-step {self._k} of a step set up for {self.accum} (FastStep(accum=…))")
        reduce = bool(self.buckets) and self._k == self.accum  # all-reduces during its backward pass
        torch.manual_seed(seed)  # dropout and Gumbel noise (a graph replay reads the generator's state)
        if self._graphs:
            self._graphs[reduce].replay()
        else:
            self._micro(reduce)

    def step(self, lr: float) -> None:
        """Clip, skip if non-finite, update with learning rate ``lr``, zero the gradients."""
        k, self._k = self._k, 0
        if self.buckets and k != self.accum:
            raise RuntimeError(
                f"step after {k} micro-steps, but the gradients are all-reduced during micro-step "
                f"{self.accum} of each step (FastStep(accum=…)): they are not summed over the ranks"
            )
        self.lr.fill_(lr)
        if self.all_reduce and not self.buckets:  # one collective between the two graphs
            assert self.flat is not None
            self._land([self._launch(0, self.flat[1].numel())])
        if self._graph_upd is not None:
            self._graph_upd.replay()
        else:
            self._step()

    def state(self) -> dict[str, Any]:
        return {
            "graphs": bool(self._graphs),
            "compiled": self._fwd is not _forward,
            "flat": self.flat is not None,
            "all_reduce": self.all_reduce,
            "buckets": len(self.buckets),  # 0: one all-reduce after the backward pass
            "cut": self.cut,
            "overlap": self.overlap,
            "fuse_linears": self.fuser is not None,
            "reduce_dtype": self.reduce_dtype,
        }

    @property
    def reduce_dtype(self) -> str | None:
        """The dtype the gradient is summed over the ranks in (None: not summed)."""
        if not self.all_reduce or self.flat is None:
            return None
        return str((self.flat[1] if self._wire is None else self._wire).dtype).removeprefix("torch.")
