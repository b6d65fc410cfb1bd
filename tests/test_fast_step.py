"""The fast step (train/fast.py) computes what the plain step computes.

On the CPU the step is compiled by Inductor (C++ kernels; no CUDA graphs); on a GPU, when one is
visible, the same tests run with bf16 autocast and CUDA graphs (looser tolerances). Dropout is off
and Inductor's ``fallback_random`` on, so both steps draw the same Gumbel noise.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import time

import numpy as np
import pytest
import torch

from electra_ray.config import ConfigError, TrainConfig, model_preset
from electra_ray.model.electra import ElectraPretrainer
from electra_ray.model.masking import draw_masks, masked_batch, step_generator
from electra_ray.train.data import InstanceArrays, build_batch, global_rows, split_rows
from electra_ray.train.fast import (
    BatchesAhead,
    DataWaitClock,
    DeviceInstances,
    FastStep,
    bf16_autocast,
    data_batch_on_device,
    device_batch,
    fast_fuse_linears_enabled,
    fast_overlap_enabled,
    fast_step_enabled,
    on_every_rank,
    wait_from_spans,
)
from electra_ray.train.optim import make_optimizer

CLS, SEP, PAD, MASK = 1, 2, 3, 4
SPECIAL = (CLS, SEP, PAD, MASK)
V, B, L = 300, 8, 32
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_arrays(n=40, seed=0, dtype=np.uint16):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 2 * L, size=n)  # some longer than L (cut), some short (padded)
    ids = rng.integers(15, V if dtype == np.uint16 else 70000, size=int(lengths.sum())).astype(dtype)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    b_start = (lengths // 2).astype(np.int32)
    return InstanceArrays(ids, offsets, b_start)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_device_batch_equals_host_batch(device, dtype):
    arr = random_arrays(dtype=dtype)
    rows = np.array([3, 0, 39, 17, 17, 8], dtype=np.int64)
    want = build_batch(arr, rows, L, PAD)
    data = DeviceInstances(arr, torch.device(device))
    order = data.rows_of_epoch(0, lambda: rows)
    got = data.batch(order, L, PAD)
    for w, g in zip(want, got):
        assert g.device.type == device
        assert torch.equal(g.cpu(), torch.from_numpy(w))
    # the epoch's order is computed and uploaded once, and replaced for the next epoch
    assert data.rows_of_epoch(0, lambda: pytest.fail("computed again")) is order
    assert torch.equal(data.rows_of_epoch(1, lambda: rows[::-1]).cpu(), torch.from_numpy(rows[::-1].copy()))


def test_masks_on_the_device_follow_the_same_rules():
    arr = random_arrays()
    ids, _, att = (torch.from_numpy(x) for x in build_batch(arr, np.arange(16), L, PAD))
    for dev in DEVICES:
        g = step_generator(5, 9, dev)
        m = draw_masks(
            ids, att, SPECIAL, mask_prob=0.15, mask_token_prob=0.85, max_predictions=5, generator=g
        )
        assert m.positions.device.type == dev
        picked = ids.to(dev).gather(1, m.positions)
        assert not torch.isin(picked[m.valid], torch.tensor(SPECIAL, device=dev)).any()
        assert (att.to(dev).gather(1, m.positions)[m.valid] == 1).all()
        assert not (m.show_mask & ~m.valid).any()
    # the CPU generator gives what the plain loop always drew
    a, b = (
        draw_masks(ids, att, SPECIAL, mask_prob=0.15, mask_token_prob=0.85, max_predictions=5, generator=g)
        for g in (step_generator(5, 9), step_generator(5, 9, "cpu"))
    )
    assert torch.equal(a.positions, b.positions) and torch.equal(a.show_mask, b.show_mask)


@pytest.mark.parametrize("device", DEVICES)
def test_batches_built_ahead_are_the_batches_built_in_line(device):
    dev = torch.device(device)
    arr = random_arrays(n=400)
    batch, per_epoch = 64, 400 // 64  # 6 batches an epoch: keys 5 → 6 cross an epoch boundary
    kw = dict(special_ids=SPECIAL, seed=7, mask_prob=0.15, mask_token_prob=0.85, max_predictions=5)
    keys = [0, 1, 2, 3, 4, 5, 6, 7, 3, 4, 5, 6, 9]  # a rollback to 3, then a jump to 9
    spin = 5_000_000 if device == "cuda" else 0  # GPU cycles (~3 ms)

    def builder(data, slow=False):
        def build(key):
            if slow and spin:
                torch.cuda._sleep(spin)  # a slow build on its (side) stream
            epoch, k = divmod(key, per_epoch)
            order = data.rows_of_epoch(epoch, lambda: np.random.default_rng(epoch).permutation(400))
            return device_batch(data, order[k * batch : (k + 1) * batch], L, PAD, key=key, **kw)

        return build

    inline = builder(DeviceInstances(arr, dev))
    want = [[t.cpu() for t in inline(key).tensors()] for key in keys]
    # on a GPU: builds slower than the step (the step must wait for them), then a step slow to read
    # its batch (the next build must not reuse its memory before it has)
    for slow_build, slow_step in [(True, False), (False, True)] if spin else [(False, False)]:
        ahead = BatchesAhead(builder(DeviceInstances(arr, dev), slow_build), dev)
        got = []
        for i, key in enumerate(keys):
            b = ahead.take(key)
            if slow_step:
                torch.cuda._sleep(spin)
            got.append([t.clone() for t in b.tensors()])  # read on the main stream, no host sync
            del b
            if i + 1 < len(keys):
                ahead.ahead(key + 1)
        for key, w, g in zip(keys, want, got):
            assert all(x.device.type == device for x in g)
            assert all(torch.equal(x.cpu(), y) for x, y in zip(g, w)), key
        # on a GPU keys 1..7 were built ahead, then 4, 5, 6 after the rollback; on a CPU none
        assert ahead.built_ahead == (10 if spin else 0)
    b = inline(2)
    assert b.gen_den == b.masks.valid.sum() and b.disc_den == b.att.sum()
    assert b.gen_den.dtype == b.disc_den.dtype == torch.float32


def test_on_a_cpu_the_fast_steps_batches_are_the_plain_loops():
    """The loop's fast step builds batches with ``data_batch_on_device`` from the epoch's order of
    the training rows (some instances held out); on a CPU they are the plain loop's (numpy rows of
    global_rows, masks from the same CPU generator)."""
    arr = random_arrays(n=110)
    train_rows, _ = split_rows(arr.n, 10, seed=4)  # 100 training rows, not 0..99
    mcfg = model_preset("tiny", vocab_size=V, pad_token_id=PAD)
    batch, seed = 16, 11
    data = DeviceInstances(arr, torch.device("cpu"))
    kw = dict(special_ids=SPECIAL, mask_prob=mcfg.mask_prob, mask_token_prob=mcfg.mask_token_prob)
    for cursor in (0, 1, 5, 6, 13):  # 6 batches an epoch
        rows = train_rows[global_rows(cursor, batch, len(train_rows), seed)]
        ids, types, att, m = masked_batch(arr, rows, L, PAD, SPECIAL, mcfg, seed, cursor)
        got = data_batch_on_device(
            data,
            train_rows,
            cursor,
            batch_size=batch,
            seed=seed,
            seq_len=L,
            pad_id=PAD,
            max_predictions=mcfg.max_predictions(L),
            **kw,
        )
        want = (ids, types, att, m.positions, m.valid, m.show_mask)
        assert all(torch.equal(w, g) for w, g in zip(want, got.tensors())), cursor


def test_data_wait_runs_from_each_steps_end_to_the_next_batch():
    # device-clock seconds (start, batch built, step done): 1 ms batches in 10 ms steps, the third
    # step's batch started 5 ms after the second step ended (the device waited for the host)
    spans = [(0.0, 0.001, 0.010), (0.010, 0.011, 0.020), (0.025, 0.026, 0.035)]
    assert wait_from_spans(spans) == pytest.approx(0.001 + 0.001 + 0.006)
    assert wait_from_spans(spans[:1]) == pytest.approx(0.001)  # nothing before the first
    assert wait_from_spans([]) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_data_wait_clock_tells_a_slow_host_from_a_busy_device(device):
    dev = torch.device(device)
    x = torch.randn(2048, 2048, device=dev)

    def steps(clock, host_s, device_work):
        for _ in range(6):
            clock.start()
            time.sleep(host_s)  # the host preparing a batch
            x[:8] + 1  # the batch built on the device
            clock.built()
            for _ in range(device_work):
                x @ x
            clock.done()
        return clock.take()

    clock = DataWaitClock(dev, gpu_events=True)
    assert clock.events == (device == "cuda")
    # a host that takes 20 ms for each batch, a device with little to do: it waits for the host
    wait = steps(clock, 0.02, 1)
    assert wait >= 6 * 0.02 * 0.9, wait
    assert clock.take() == 0.0  # a new window
    if device == "cuda":
        # a device busy for much longer than the host's 2 ms per batch: the host runs ahead and
        # the device waits only for the first batch (host time would have counted 6 × 2 ms)
        steps(clock, 0.0, 40)  # warm-up
        torch.cuda.synchronize()
        wait = steps(clock, 0.002, 40)
        assert wait < 0.005, wait


def _setup(device):
    torch.manual_seed(0)
    cfg = model_preset("tiny", vocab_size=V, pad_token_id=PAD, dropout=0.0)
    arr = random_arrays(n=64)
    ids, types, att = (torch.from_numpy(x) for x in build_batch(arr, np.arange(B), L, PAD))
    m = draw_masks(
        ids,
        att,
        SPECIAL,
        mask_prob=0.15,
        mask_token_prob=0.85,
        max_predictions=cfg.max_predictions(L),
        generator=step_generator(0, 0),
    )
    plain = ElectraPretrainer(cfg)
    fast = copy.deepcopy(plain)
    fast.tie()
    dev = torch.device(device)
    plain.to(dev).tie()
    fast.to(dev).tie()
    fast.check_tying()
    opts = [
        make_optimizer(x, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, warmup=0, total=100)[0]
        for x in (plain, fast)
    ]
    batch = (ids.to(dev), types.to(dev), att.to(dev), m.to(dev))
    dens = (m.valid.sum().float().to(dev), att.sum().float().to(dev))
    return cfg, plain, fast, opts, batch, dens


def fast_step(cfg, model, opt, device, flat, overlap=False, fuse=False):
    return FastStep(
        model,
        opt,
        flat=flat,
        overlap=overlap,
        fuse_linears=fuse,
        device=torch.device(device),
        micro=B,
        seq_len=L,
        slots=cfg.max_predictions(L),
        mask_id=MASK,
        clip_norm=1.0,
    )


def _plain_step(model, opt, batch, dens, seed, lr, scale=1.0):
    ids, types, att, m = batch
    torch.manual_seed(seed)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16) if ids.is_cuda else torch.autocast("cpu", enabled=False)
    )
    with amp:
        out = model(ids, types, att, m, MASK, gen_denominator=dens[0], disc_denominator=dens[1])
    (out.loss * scale).backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    for g in opt.param_groups:
        g["lr"] = lr
    opt.step(ok=torch.isfinite(norm))
    opt.zero_grad(set_to_none=True)
    return out.metrics(), norm


@pytest.fixture
def fallback_random():
    import torch._inductor.config as ic

    old = ic.fallback_random
    ic.fallback_random = True
    yield
    ic.fallback_random = old


@pytest.mark.parametrize(
    "flat,overlap,fuse",
    [(False, False, False), (True, False, False), (True, True, True)],
    ids=["pertensor", "flat", "flat-overlap-fused"],
)
@pytest.mark.parametrize("device", DEVICES)
def test_fast_step_matches_plain_step(device, flat, overlap, fuse, fallback_random):
    """overlap: the generator's and the discriminator's halves compiled apart (on CUDA the
    generator's backward on a side stream, captured as a second branch of the graph); fuse: each
    attention's query, key and value projections compiled as one linear layer (graph_passes.py)."""
    cfg, plain, fast, (opt_p, opt_f), batch, dens = _setup(device)
    step = fast_step(cfg, fast, opt_f, device, flat, overlap, fuse)
    # the name of its graphs' file in the run folder's compile cache: what makes the graphs differ
    options = ["pertensor"] * (not flat) + ["overlap"] * overlap + ["fused"] * fuse
    assert step.variant == "-".join([f"{B}x{L}", f"{cfg.max_predictions(L)}slots", *options])
    before = [p.detach().clone() for p in fast.parameters()]
    # compiles (and captures) with the update disabled: nothing moves. A graph that Inductor's
    # caches serve does not go through the fusion pass: they are off where the test counts its work
    import torch._inductor.config as ic

    with ic.patch(force_disable_caches=True) if fuse else contextlib.nullcontext():
        step.warm_up()
    assert all(torch.equal(a, p) for a, p in zip(before, fast.parameters()))
    if fuse:  # one group per attention layer (the generator's and the discriminator's)
        assert step.fuser.fused == cfg.gen_num_layers + cfg.num_layers
    assert step.acc.abs().sum() == 0 and step.bad == 0
    gpu = device == "cuda"
    assert step.state() == {
        "graphs": gpu,
        "compiled": True,
        "flat": flat,
        "all_reduce": False,
        "buckets": 0,
        "cut": False,
        "overlap": overlap,
        "fuse_linears": fuse,
        "reduce_dtype": None,  # one worker: nothing summed over ranks
    }
    if flat:  # the parameters, gradients and moments are views of one buffer each
        for p in fast.parameters():
            assert p.untyped_storage().data_ptr() == step.flat[0].untyped_storage().data_ptr()
            assert p.grad.untyped_storage().data_ptr() == step.flat[1].untyped_storage().data_ptr()
            # each view starts where a tensor of its own would (on CUDA, kernels assume >= 16-byte
            # alignment: the discriminator head's one-element bias once shifted every later view by 4
            # bytes, and the first CUDA run of this test died of "misaligned address")
            moments = opt_f.state[p]["exp_avg"], opt_f.state[p]["exp_avg_sq"]
            assert all(t.storage_offset() * t.element_size() % 256 == 0 for t in (p, p.grad, *moments))
    rtol = 3e-2 if gpu else 1e-5
    for k in range(3):
        want, norm = _plain_step(plain, opt_p, batch, dens, seed=11 + k, lr=1e-3)
        step.acc.zero_()
        step.micro_step(*batch, *dens, seed=11 + k)
        step.step(1e-3)
        torch.testing.assert_close(step.acc, want, rtol=rtol, atol=1e-3 if gpu else 1e-6)
        torch.testing.assert_close(step.grad_norm, norm.float(), rtol=rtol * 3, atol=1e-6)
    assert step.bad == 0
    moved = max((p - b).abs().max().item() for p, b in zip(fast.parameters(), before))
    assert moved > 1e-4  # the update really ran
    if not gpu:
        for p, q in zip(plain.parameters(), fast.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-5)
    fast.check_tying()


def test_the_fusion_pass_joins_the_linear_layers_that_read_one_tensor():
    import torch._inductor.config as ic
    import torch.nn.functional as F

    from electra_ray.train.graph_passes import FuseSharedInputLinears

    def f(x, w0, w1, w2, b0, b1, b2, n0, n1, wy):
        q, k, v = F.linear(x, w0, b0), F.linear(x, w1, b1), F.linear(x, w2, b2)  # a group with biases
        m0, m1 = F.linear(x, n0), F.linear(x, n1)  # one without
        y = F.linear(q, wy)  # alone: left as it is
        return (q * k[..., :4]).sum() + v.mean() + (m0 * m1[..., :5]).sum() + y.pow(2).sum()

    torch.manual_seed(0)
    shapes = [(2, 5, 8), (4, 8), (6, 8), (3, 8), (4,), (6,), (3,), (5, 8), (7, 8), (2, 4)]
    args = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    want = f(*args)
    want_grads = torch.autograd.grad(want, args)
    fuse = FuseSharedInputLinears()
    with ic.patch(force_disable_caches=True, pre_grad_custom_pass=fuse):
        got = torch.compile(f, dynamic=False)(*args)
        got_grads = torch.autograd.grad(got, args)
    assert fuse.fused == 2
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_fast_step_skips_a_nonfinite_step_and_reloads_optimizer_state(device, flat, fallback_random):
    cfg, _, fast, (_, opt), batch, dens = _setup(device)
    step = fast_step(cfg, fast, opt, device, flat)
    step.micro_step(*batch, *dens, seed=1)
    step.step(1e-3)
    saved_model = {k: v.clone() for k, v in fast.state_dict().items()}
    saved_opt = copy.deepcopy(opt.state_dict())
    moments = [opt.state[p]["exp_avg"].clone() for p in fast.parameters()]
    step.micro_step(*batch, *dens, seed=2, scale=float("nan"))  # the test hook's NaN loss
    step.step(1e-3)
    assert step.bad == 1
    assert all(torch.equal(v, fast.state_dict()[k]) for k, v in saved_model.items())
    assert all(torch.equal(m, opt.state[p]["exp_avg"]) for m, p in zip(moments, fast.parameters()))
    # a good step, then a rollback to the saved state: the step carries on from the loaded moments
    step.micro_step(*batch, *dens, seed=3)
    step.step(1e-3)
    after_good = [p.detach().clone() for p in fast.parameters()]
    storages = [opt.state[p]["exp_avg"].data_ptr() for p in fast.parameters()]
    fast.load_state_dict(saved_model)
    fast.tie()
    opt.load_state_dict(saved_opt)
    step.bind_optimizer_state()
    assert [opt.state[p]["exp_avg"].data_ptr() for p in fast.parameters()] == storages
    step.micro_step(*batch, *dens, seed=3)
    step.step(1e-3)
    for a, p in zip(after_good, fast.parameters()):
        torch.testing.assert_close(a, p, rtol=0, atol=1e-6 if device == "cpu" else 1e-3)


# buckets of 20 KB: the test model's 420 KB of gradients in about 20 buckets
SMALL_BUCKETS_MB = 0.02


def _cpu_step(cfg, model, opt, micro=B // 2, **kw):
    """An uncompiled FastStep on the CPU, on micro-batches of ``micro`` sequences."""
    return FastStep(
        model, opt, device=torch.device("cpu"), micro=micro, seq_len=L, slots=cfg.max_predictions(L),
        mask_id=MASK, clip_norm=1.0, compile=False, **kw,
    )  # fmt: skip


def _half_batch_step(cfg, model, opt, world, bucket_mb=0.0):
    """An uncompiled FastStep on micro-batches of half the batch; one rank keeps the per-tensor
    update, so the two-rank flat update is checked against the other implementation."""
    return _cpu_step(cfg, model, opt, world=world, flat=world > 1, bucket_mb=bucket_mb)


def _micro_steps(step, batch, dens, k, ranks, h=B // 2):
    """Micro-batches ``ranks`` of the batch cut into parts of ``h`` sequences (halves by default),
    each seeded by its index, as the loop does."""
    ids, types, att, m = batch
    for r in ranks:
        sl = slice(r * h, (r + 1) * h)
        step.micro_step(ids[sl], types[sl], att[sl], m.rows(r * h, (r + 1) * h), *dens, seed=100 * k + r)


def _three_steps(step, batch, dens, ranks, h=B // 2) -> list[float]:
    """Three steps, each on micro-batches ``ranks`` of the batch (``_micro_steps``): their gradient norms."""
    norms = []
    for k in range(3):
        _micro_steps(step, batch, dens, k, ranks, h)
        step.step(1e-3)
        norms.append(float(step.grad_norm))
    return norms


def _assert_trained_alike(got, model, norms):
    """Rank 0's saved gradient norms and parameters (``got``) are the one-rank run's (``model``,
    ``norms``), to the sums' other order."""
    assert got["norms"] == pytest.approx(norms, rel=5e-5)
    for want, p in zip(model.parameters(), got["params"]):
        torch.testing.assert_close(p, want.detach(), rtol=0, atol=1e-6)


@contextlib.contextmanager
def _gloo(rank: int, folder: str):
    """Rank ``rank`` of a two-rank gloo group for the block; the process ends with it. Both ranks
    are done before either tears gloo down: a rank that exited while the other still had its
    connections open aborted at exit ("terminate called without an active exception") in ~1 of 10
    runs of the bucketed test below; with the barrier 0 of 40 (`-k two_ranks`, this 2-core CPU)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    yield
    dist.barrier()
    dist.destroy_process_group()
    # and the process ends here, its work saved: gloo's threads could still abort it at its normal
    # exit once the other rank had gone (seen once in bench_allreduce.py's two ranks, barrier and all)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _rank(rank: int, folder: str, bucket_mb: float) -> None:
    """One of two gloo ranks: FastStep(world=2) on its half of each batch; rank 1 starts from other
    weights, which the broadcast must replace. Rank 0 saves its parameters, gradient norms and when
    its buckets were launched."""
    with _gloo(rank, folder):
        cfg, _, model, (_, opt), batch, dens = _setup("cpu")
        if rank == 1:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
        step = _half_batch_step(cfg, model, opt, world=2, bucket_mb=bucket_mb)
        assert step.state()["flat"] and step.state()["all_reduce"]
        norms = _three_steps(step, batch, dens, [rank])
        if rank == 0:
            torch.save(
                {
                    "params": [p.detach() for p in model.parameters()],
                    "norms": norms,
                    "buckets": step.state()["buckets"],
                    "launched": step.launched,
                },
                f"{folder}/rank0.pt",
            )


def _choose(rank: int, folder: str) -> None:
    """One of two gloo ranks: does every rank say yes, when both do and when only rank 0 does."""
    with _gloo(rank, folder):
        cpu = torch.device("cpu")
        torch.save([on_every_rank(True, cpu, 2), on_every_rank(rank == 0, cpu, 2)], f"{folder}/rank{rank}.pt")


def test_the_workers_agree_on_the_fast_step(tmp_path):
    """--fast-step auto is decided from each worker's GPU; a worker whose GPU is too old for it
    turns it off on every worker (the fast step and DDP exchange gradients differently)."""
    import torch.multiprocessing as mp

    mp.spawn(_choose, args=(str(tmp_path),), nprocs=2, join=True)
    assert [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)] == [[True, False], [True, False]]
    assert on_every_rank(False, torch.device("cpu"), 1) is False  # one worker: no collective


@pytest.mark.parametrize("bucket_mb", [0.0, SMALL_BUCKETS_MB], ids=["one-all-reduce", "buckets"])
def test_fast_step_on_two_ranks_equals_one_rank_with_both_micro_batches(tmp_path, bucket_mb):
    """Several workers without DDP: the flat gradient all-reduced (in ``step``, or by buckets during
    the backward pass) gives one worker's update over the same two micro-batches, and a rank that
    started from other weights takes rank 0's."""
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(str(tmp_path), bucket_mb), nprocs=2, join=True)
    got = torch.load(tmp_path / "rank0.pt")
    n_params = len([p for p in _setup("cpu")[2].parameters()])
    if bucket_mb:
        # launched in order while the backward pass went on: the first long before its end
        assert got["buckets"] >= 5 and len(got["launched"]) == got["buckets"]
        assert got["launched"] == sorted(got["launched"]) and got["launched"][-1] == n_params
        assert got["launched"][0] < n_params // 2
    else:
        assert got["buckets"] == 0 and got["launched"] == []
    cfg, _, model, (_, opt), batch, dens = _setup("cpu")
    step = _half_batch_step(cfg, model, opt, world=1)
    _assert_trained_alike(got, model, _three_steps(step, batch, dens, [0, 1]))


def _uneven_rank(rank: int, folder: str) -> None:
    """One of two gloo ranks sharing 3 micro-batches as the loop deals them: rank 0 one, rank 1
    two (FastStep(accum=…) differs between the ranks); rank 0 saves its parameters and norms."""
    with _gloo(rank, folder):
        cfg, _, model, (_, opt), batch, _ = _setup("cpu")
        mine = [0] if rank == 0 else [1, 2]
        step = _cpu_step(cfg, model, opt, micro=2, world=2, bucket_mb=SMALL_BUCKETS_MB, accum=len(mine))
        norms = _three_steps(step, batch, _dens_of_six(batch), mine, h=2)
        if rank == 0:
            torch.save(
                {"params": [p.detach() for p in model.parameters()], "norms": norms}, f"{folder}/rank0.pt"
            )


def _dens_of_six(batch):
    """The loss denominators of the batch's first 6 sequences (3 micro-batches of 2)."""
    _, _, att, m = batch
    return m.valid[:6].sum().float(), att[:6].sum().float()


def test_ranks_with_uneven_micro_batches_give_the_one_rank_update(tmp_path):
    """3 micro-batches on 2 workers (an elastic resize can leave such a split): each rank all-reduces
    its buckets during its own last micro-batch, rank 0 during its first and rank 1 during its
    second, and the update is still one worker's over all three."""
    import torch.multiprocessing as mp

    mp.spawn(_uneven_rank, args=(str(tmp_path),), nprocs=2, join=True)
    got = torch.load(tmp_path / "rank0.pt")
    cfg, _, model, (_, opt), batch, _ = _setup("cpu")
    step = _cpu_step(cfg, model, opt, micro=2, world=1)
    _assert_trained_alike(got, model, _three_steps(step, batch, _dens_of_six(batch), [0, 1, 2], h=2))


def _sum_rank(rank: int, folder: str, bucket_mb: float, wire: str) -> None:
    """One of two gloo ranks: its own gradient of its half of the batch (a one-worker step), then
    the gradient the two-worker step's update sees, summed over the ranks in ``wire``."""
    with _gloo(rank, folder):
        cfg, own_model, model, (own_opt, opt), batch, dens = _setup("cpu")
        own = _cpu_step(cfg, own_model, own_opt, world=1)
        _micro_steps(own, batch, dens, 0, [rank])
        dtype = {"bf16": torch.bfloat16, "fp32": None}[wire]
        step = _cpu_step(cfg, model, opt, world=2, bucket_mb=bucket_mb, reduce_dtype=dtype)
        seen, update = [], step._upd
        step._upd = lambda flat, *rest: (seen.append(flat[1].clone()), update(flat, *rest))[1]
        _micro_steps(step, batch, dens, 0, [rank])
        step.step(1e-3)
        # the last update's (the first ones are the warm-up's)
        torch.save(
            {"own": own.flat[1].clone(), "summed": seen[-1], "state": step.state()}, f"{folder}/rank{rank}.pt"
        )


@pytest.mark.parametrize(
    "bucket_mb,wire",
    [(SMALL_BUCKETS_MB, "bf16"), (0.0, "bf16"), (SMALL_BUCKETS_MB, "fp32")],
    ids=["buckets-bf16", "one-all-reduce-bf16", "buckets-fp32"],
)
def test_gradients_summed_in_bf16_are_the_sum_of_the_rounded_gradients(tmp_path, bucket_mb, wire):
    """--allreduce-dtype bf16: each rank's gradient goes on the wire rounded to bf16 and the update
    sees their sum rounded to bf16 (with two ranks that is exactly what gloo computes, so the
    comparison is exact), whether summed by buckets during the backward pass or once after it; in
    fp32 the update sees the exact sum."""
    import torch.multiprocessing as mp

    mp.spawn(_sum_rank, args=(str(tmp_path), bucket_mb, wire), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    g0, g1 = r0["own"], r1["own"]
    assert not torch.equal(g0, g1)
    exact = g0 + g1
    bf = lambda x: x.to(torch.bfloat16).float()  # noqa: E731
    want = bf(bf(g0) + bf(g1)) if wire == "bf16" else exact
    assert torch.equal(r0["summed"], want) and torch.equal(r1["summed"], want)
    if wire == "bf16":
        assert not torch.equal(want, exact)
        # elementwise the rounding can be large where the two ranks' gradients cancel; as a whole
        # it is bf16's: 2^-8 relative at most per rounding
        assert float((want - exact).norm() / exact.norm()) < 2**-8
    assert r0["state"]["reduce_dtype"] == ("bfloat16" if wire == "bf16" else "float32"), r0["state"]
    assert (r0["state"]["buckets"] > 1) == (bucket_mb > 0), r0["state"]


def test_bf16_only_where_the_gpu_computes_in_it(monkeypatch):
    """bf16 autocast from compute capability 8.0 (A100, A10G, L4, H100); V100 and T4 train in fp32."""
    assert not bf16_autocast(torch.device("cpu"))
    for capability, want in (
        ((7, 0), False),
        ((7, 5), False),
        ((8, 0), True),
        ((8, 6), True),
        ((9, 0), True),
    ):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert bf16_autocast(torch.device("cuda")) is want, capability


def test_fast_step_setting(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    # auto: on for the GPUs Triton compiles for (a P100, 6.0, is refused by Inductor), off on CPUs
    for capability, want in (((6, 0), False), ((7, 0), True), ((7, 5), True), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert fast_step_enabled("auto", cuda) is want, capability
        assert fast_step_enabled("on", cuda) and not fast_step_enabled("off", cuda)
    assert not fast_step_enabled("auto", cpu)
    assert fast_step_enabled("on", cpu) and not fast_step_enabled("off", cuda)
    with pytest.raises(ConfigError, match="--fast-step must be auto, on or off"):
        TrainConfig(tokenizer="t", storage_path="s", name="n", data="d", fast_step="yes")
    # the generator's backward on a side stream: by default for one GPU worker only
    assert fast_overlap_enabled("auto", cuda, 1)
    assert not fast_overlap_enabled("auto", cuda, 2) and not fast_overlap_enabled("auto", cpu, 1)
    assert fast_overlap_enabled("on", cpu, 2) and not fast_overlap_enabled("off", cuda, 1)
    with pytest.raises(ConfigError, match="--fast-overlap must be auto, on or off"):
        TrainConfig(tokenizer="t", storage_path="s", name="n", data="d", fast_overlap="1")
    # the query/key/value projections fused: off until measured on a GPU
    assert fast_fuse_linears_enabled("on") and not fast_fuse_linears_enabled("auto")
    assert not fast_fuse_linears_enabled("off")
    with pytest.raises(ConfigError, match="--fast-fuse-linears must be auto, on or off"):
        TrainConfig(tokenizer="t", storage_path="s", name="n", data="d", fast_fuse_linears="yes")


# on a GPU also with the gradients summed in bf16 (the wire buffer's copies captured with the
# collectives); on a CPU that is test_gradients_summed_in_bf16_are_the_sum_of_the_rounded_gradients
@pytest.mark.parametrize(
    "device,wire", [(d, w) for d in DEVICES for w in (["fp32", "bf16"] if d == "cuda" else ["fp32"])]
)
def test_buckets_all_reduced_during_a_compiled_backward(device, wire, tmp_path, fallback_random):
    """One rank of a real process group (gloo; NCCL on a GPU, where the collectives are captured in
    the graph): the compiled forward cut into pieces delivers its gradients piece by piece, so the
    first buckets are launched long before the backward pass ends; with two micro-batches a step,
    only the second all-reduces. The result is the uncompiled one-worker step's."""
    import torch.distributed as dist

    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        cfg, _, model, (_, opt), batch, dens = _setup(device)
        step = FastStep(
            model, opt, device=torch.device(device), micro=B // 2, seq_len=L,
            slots=cfg.max_predictions(L), mask_id=MASK, clip_norm=1.0,
            all_reduce=True, bucket_mb=0.1, accum=2, reduce_dtype=torch.bfloat16 if wire == "bf16" else None,
        )  # fmt: skip
        state = step.state()  # 100 KB buckets (the fewer the pieces, the quicker the compilation)
        assert state["reduce_dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[wire]
        # graphs are captured at the first micro-step, not yet
        assert state["cut"] and state["buckets"] >= 4 and not state["graphs"]
        assert step.variant == f"{B // 2}x{L}-{cfg.max_predictions(L)}slots-cut{state['buckets']}"
        _, _, ref, (_, ref_opt), ref_batch, ref_dens = _setup("cpu")
        ref_step = _half_batch_step(cfg, ref, ref_opt, world=1)
        gpu = device == "cuda"
        for k in range(3):
            _micro_steps(step, batch, dens, k, [0, 1])
            step.step(1e-3)
            _micro_steps(ref_step, ref_batch, ref_dens, k, [0, 1])
            ref_step.step(1e-3)
            torch.testing.assert_close(
                step.grad_norm.cpu(), ref_step.grad_norm, rtol=1e-1 if gpu else 1e-5, atol=1e-6
            )
        assert step.state()["graphs"] == gpu  # on CUDA the NCCL collectives were captured with the kernels
        n_params = len(list(model.parameters()))
        assert len(step.launched) == state["buckets"] and step.launched[-1] == n_params
        assert step.launched[0] < n_params // 2
        if not gpu:
            for p, q in zip(ref.parameters(), model.parameters()):
                torch.testing.assert_close(p, q, rtol=0, atol=1e-5)
        # a step after too few micro-steps is refused: its gradients were never summed over the ranks
        _micro_steps(step, batch, dens, 3, [0])
        with pytest.raises(RuntimeError, match="not summed"):
            step.step(1e-3)
    finally:
        dist.destroy_process_group()
