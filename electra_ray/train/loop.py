"""The per-worker training loop (runs inside Ray Train's TorchTrainer workers).

Reads top to bottom: set up → resume → loop of (build batch → micro-steps → optimizer step) →
every ``log_every`` steps one all-reduce of the metric sums and one ``ray.train.report`` (with a
checkpoint every ``checkpoint_every`` steps). No host sync happens between reports.

Randomness is keyed, not carried: masks come from (seed, batch) over the global batch; dropout and
Gumbel noise from (seed, batch, global micro-batch index), where the index is the micro-batch's
first global row divided by the micro-batch size ("batch" is the data cursor: the number of global
batches handed out so far, equal to the step unless a rollback skipped some). So a resume is exact
without restoring RNG states, masks are the same at any world size, and since the micro-batch size
is fixed across world sizes (``TrainConfig.micro_batch``) so is all the rest: only the order of
floating-point reductions differs between world sizes.

Non-finite steps are skipped on the device (the optimizer's update is masked, no host sync) and
counted; at a report, ``nonfinite_rollback`` of them since the last checkpoint roll the run back to
that checkpoint's state (kept in host memory) and the data cursor moves on past the bad batches.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from electra_ray.config import FastStepError, ModelConfig, TrainConfig
from electra_ray.model.electra import METRIC_NAMES, ElectraPretrainer, flops_per_token
from electra_ray.model.masking import masked_batch
from electra_ray.train import compile_cache
from electra_ray.train.checkpoint import (
    CheckpointUploads,
    Progress,
    check_compatible,
    load_model_state,
    load_train_state,
    local_checkpoint_folder,
    read_meta,
    remove_stale_checkpoint_folders,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from electra_ray.train.data import (
    global_rows,
    rows_digest,
    split_rows,
)
from electra_ray.train.fast import (
    BatchesAhead,
    DataWaitClock,
    DeviceInstances,
    FastStep,
    bf16_autocast,
    data_batch_on_device,
    describe_device,
    fast_fuse_linears_enabled,
    fast_overlap_enabled,
    fast_step_enabled,
    on_every_rank,
    peak_flops,
)
from electra_ray.train.optim import lr_factor, optimizer_for

# the settings a resume must share with the checkpoint it continues
RESUME_KEYS = ("batch_size", "seed", "preset", "data", "corpus", "max_seq_length")


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def _to_cpu(obj: Any, memo: dict[int, torch.Tensor] | None = None) -> Any:
    """A deep copy with every tensor cloned to the host (a rollback snapshot); tensors shared in
    ``obj`` (the tied embeddings) stay shared in the copy."""
    memo = {} if memo is None else memo
    if isinstance(obj, torch.Tensor):
        if id(obj) not in memo:
            memo[id(obj)] = obj.detach().to("cpu", copy=True)
        return memo[id(obj)]
    if isinstance(obj, dict):
        return {k: _to_cpu(v, memo) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v, memo) for v in obj)
    return obj


def _rates(t: torch.Tensor) -> dict[str, float]:
    s = dict(zip(METRIC_NAMES, t.tolist()))
    n_m, n_t = max(s["n_masked"], 1.0), max(s["n_tokens"], 1.0)
    gen, disc = s["gen_loss_sum"] / n_m, s["disc_loss_sum"] / n_t
    return {
        "gen_loss": gen,
        "disc_loss": disc,
        "gen_acc": s["gen_correct"] / n_m,
        "disc_acc": s["disc_correct"] / n_t,
        "replaced_share": s["replaced"] / n_t,
        "replaced_recall": s["replaced_found"] / max(s["replaced"], 1.0),
        "tokens": s["n_tokens"],
    }


def quiet_ray_report_log() -> None:
    """Ray Train (2.60) logs each ``ray.train.report`` of every rank at INFO with its whole metrics
    dict, on a logger named by its file's path, which RunConfig's log level does not govern; the
    loop's own line says the same once per report. Quieted to warnings."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    log = getattr(context, "logger", None)
    if isinstance(log, logging.Logger):
        log.setLevel(logging.WARNING)


def fast_step_error(
    exc: BaseException, setting: str, rank: int, device: torch.device, cached: int = 0
) -> FastStepError:
    """What a worker says when the fast step fails to compile or capture: where, why (the cause's
    first line) and how to run without it; ``cached``: graphs it loaded from the run folder."""
    import ray

    why = (str(exc).strip().splitlines() or [""])[0]
    cache = (
        f"it had loaded {cached} compiled graphs from the run folder's compile_cache/ "
        "(--fast-compile-cache off compiles without them); "
        if cached
        else ""
    )
    return FastStepError(
        f"the fast step (--fast-step {setting}) could not start on worker {rank} "
        f"(node {ray.util.get_node_ip_address()}, {describe_device(device)}): {type(exc).__name__}: {why} — {cache}"
        "--fast-step off trains the same model with the plain eager step (slower; checkpoints "
        "resume across the two)"
    )


def bf16_mean_hook(_state, bucket):  # unannotated: DDP refuses this module's string annotations
    """A DDP communication hook: a bucket's gradients (a ``dist.GradBucket``) averaged over the
    ranks in bf16, half the bytes of DDP's fp32 all-reduce; returns the future of the averaged
    fp32 buffer. torch's own bf16_compress_hook refuses anything but NCCL; this one runs on gloo
    too, so the CPU tests exercise what a GPU cluster runs."""
    buf = bucket.buffer()
    wire = (buf / dist.get_world_size()).to(torch.bfloat16)
    return dist.all_reduce(wire, async_op=True).get_future().then(lambda fut: buf.copy_(fut.value()[0]))


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    import ray
    import ray.train
    import ray.train.torch

    quiet_ray_report_log()
    # ---------------------------------------------------------------------------------- setup
    tcfg = TrainConfig.from_dict(config["train"])
    mcfg = ModelConfig.from_dict(config["model"])
    special = config["special"]  # {"cls", "sep", "pad", "mask"} ids
    seq_len = config["seq_len"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    arrays = ray.get(config["data_ref"])  # zero-copy views of the object store
    train_rows, eval_rows = split_rows(arrays.n, tcfg.eval_instances, tcfg.seed)
    n_train = len(train_rows)
    micro = tcfg.micro_batch
    n_micro = tcfg.batch_size // micro
    if world > n_micro:
        raise ValueError(f"{world} workers but only {n_micro} micro-batches of {micro} per global batch")
    # this worker's contiguous run of the global batch's micro-batches (uneven when W ∤ n_micro)
    first_micro, accum = rank * n_micro // world, (rank + 1) * n_micro // world - rank * n_micro // world
    lo, share = first_micro * micro, accum * micro
    inject = frozenset(tcfg.inject_nonfinite)

    stale = remove_stale_checkpoint_folders()  # left on this node by workers killed mid-upload
    if stale:
        print(f"rank {rank}: removed {len(stale)} local checkpoint folder(s) of dead workers", flush=True)
    if device.type == "cpu":
        torch.set_num_threads(tcfg.cpus_per_worker)  # Ray sets OMP_NUM_THREADS=1 unless told otherwise
    torch.manual_seed(tcfg.seed)  # same initial weights on every rank
    model = ElectraPretrainer(mcfg)
    opt, sched = optimizer_for(model, tcfg)
    prog = Progress()
    store = config["store"]  # {"filesystem": pyarrow fs, "root": run folder path in it}
    # rank 0 uploads checkpoints in the background and reports each to Ray once it is in storage
    uploads = (
        CheckpointUploads(store["filesystem"], store["root"], retry_s=tcfg.upload_retry_s)
        if rank == 0
        else None
    )

    # --------------------------------------------------------------------------------- resume
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            meta = read_meta(d)
            check_compatible(meta, mcfg.to_dict(), tcfg.to_dict(), RESUME_KEYS)
            model.load_state_dict(load_model_state(d))
            model.tie()
            state = load_train_state(d)
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            # the peak lr and weight decay are this launch's flags (a restart may lower --lr)
            sched.base_lrs = [tcfg.lr] * len(opt.param_groups)
            for i, group in enumerate(opt.param_groups):  # [decayed weights, biases and LayerNorms]
                group["lr"] = tcfg.lr * lr_factor(sched.last_epoch, tcfg.warmup_steps, tcfg.schedule_steps)
                group["weight_decay"] = tcfg.weight_decay if i == 0 else 0.0
            if "progress" in state:
                prog.load_state_dict(state["progress"])
            else:  # checkpoints written before the progress record: the cursor was the step
                prog = Progress(step=state["step"], cursor=state["step"])
            if "rng" in state:
                set_rng_state(state["rng"])
        if rank == 0:
            print(
                f"resumed from the checkpoint of step {prog.step} ({world} worker(s); data batch {prog.cursor}, "
                f"sample {prog.cursor * tcfg.batch_size}, {prog.tokens_seen} tokens seen)",
                flush=True,
            )
    model.check_tying()
    own = fast_step_enabled(tcfg.fast_step, device)
    if device.type == "cuda" and tcfg.fast_step == "auto" and not own:
        print(
            f"note: worker {rank}'s {describe_device(device)} is older than Triton, which compiles "
            f"the fast step, supports (7.0): training with the plain step{' on every worker' if world > 1 else ''}",
            flush=True,
        )
    fast_on = on_every_rank(own, device, world)  # collective: one step for all workers
    # moves to the device; DDP when world > 1, except for the fast step, which all-reduces its flat
    # gradient buffer itself, by buckets during the backward pass, inside its CUDA graphs
    ddp_model = ray.train.torch.prepare_model(model, parallel_strategy=None if fast_on else "ddp")
    model.check_tying()
    wire = torch.bfloat16 if tcfg.allreduce_dtype == "bf16" else None  # --allreduce-dtype
    if wire is not None and world > 1 and not fast_on:  # DDP's buckets, summed in bf16
        ddp_model.register_comm_hook(None, bf16_mean_hook)
        if rank == 0:
            print(f"plain step: {world} workers, DDP's gradient buckets averaged in bf16", flush=True)
    use_amp = bf16_autocast(device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext
    if device.type == "cuda" and not use_amp and rank == 0:
        print(f"note: {describe_device(device)} has no bf16: training in fp32", flush=True)

    fast = None
    compiled: dict[str, Any] = {}  # the fast step's compile: seconds, graphs from and to the run folder
    if fast_on:
        fast = FastStep(
            model,
            opt,
            device=device,
            micro=micro,
            seq_len=seq_len,
            slots=min(mcfg.max_predictions(seq_len), seq_len),
            mask_id=special["mask"],
            clip_norm=tcfg.clip_norm,
            world=world,
            bucket_mb=tcfg.allreduce_bucket_mb,
            accum=accum,
            overlap=fast_overlap_enabled(tcfg.fast_overlap, device, world),
            fuse_linears=fast_fuse_linears_enabled(tcfg.fast_fuse_linears),
            reduce_dtype=wire,
        )
        if rank == 0:
            n = len(fast.buckets)
            reduce = (
                f"; {world} workers, the gradients all-reduced in {n} bucket{'s' if n > 1 else ''} "
                "during the backward pass"
                if n
                else f"; {world} workers, one all-reduce of the flat gradients per step"
            ) + (" (in bf16)" if wire is not None else "")
            side = (  # --fast-overlap
                "; the generator's backward pass on a second CUDA stream"
                if device.type == "cuda"
                else "; the generator's and the discriminator's halves compiled apart"
            )
            print(
                f"fast step: compiling{' and capturing CUDA graphs' if fast.graphs else ''}"
                f"{side if fast.overlap else ''}"
                f"{'; query, key and value projections as one' if fast.fuser else ''}"
                f"{reduce if world > 1 else ''}…",
                flush=True,
            )
        # the run folder's compiled graphs: a worker on a node that never compiled this step starts warm
        use_cache = tcfg.fast_compile_cache == "on"
        cached = compile_cache.load(config["run"], device, fast.variant) if use_cache else frozenset()
        try:
            took = fast.warm_up()
        except Exception as e:  # noqa: BLE001 - Inductor, Triton, a C compiler, CUDA graphs: any of them
            raise fast_step_error(e, tcfg.fast_step, rank, device, len(cached)) from e
        saved = (
            compile_cache.save(config["run"], device, fast.variant, loaded=cached)
            if use_cache and rank == 0
            else 0
        )
        compiled = {
            "compile_s": round(took, 1),
            "cache_loaded": len(cached),
            "cache_saved": saved,
            "reduce_dtype": fast.reduce_dtype,  # None on one worker
        }
        if rank == 0:
            where = f" ({len(cached)} compiled graphs from the run folder)" if cached else ""
            wrote = f"; {saved} written to the run folder's compile cache" if saved else ""
            print(f"fast step ready in {took:.0f} s{where}{wrote}", flush=True)
        # the update runs in the fast step's own graph, never through optimizer.step(): the
        # scheduler's first step would warn that the optimizer has not stepped
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
    special_ids = (special["cls"], special["sep"], special["pad"], special["mask"])
    # the fast step's batches are gathered and masked on its device, from the token ids resident
    # there (on a CPU: the object store's arrays themselves, no copy; the same batches and masks as
    # the plain loop's, which builds them with numpy), the next one on a side stream while the
    # current step runs (BatchesAhead)
    batches = None
    if fast is not None:
        on_device = DeviceInstances(arrays, device)
        batch_kw = dict(
            batch_size=tcfg.batch_size,
            seed=tcfg.seed,
            seq_len=seq_len,
            pad_id=special["pad"],
            special_ids=special_ids,
            mask_prob=mcfg.mask_prob,
            mask_token_prob=mcfg.mask_token_prob,
            max_predictions=mcfg.max_predictions(seq_len),
        )
        batches = BatchesAhead(
            lambda cursor: data_batch_on_device(on_device, train_rows, cursor, **batch_kw), device
        )
    acc = fast.acc if fast else torch.zeros(len(METRIC_NAMES), device=device, dtype=torch.float64)
    bad = fast.bad if fast else torch.zeros((), device=device, dtype=torch.float64)  # skipped steps
    digest = 0  # rows_digest of the rows this worker trained on since the last report
    since_ckpt_bad = 0

    def snapshot() -> dict[str, Any] | None:
        """The state a rollback returns to (host memory), taken at every checkpoint."""
        if not tcfg.nonfinite_rollback:
            return None
        return {
            "model": _to_cpu(model.state_dict()),
            "optimizer": _to_cpu(opt.state_dict()),
            "scheduler": sched.state_dict(),
            "step": prog.step,
        }

    last_good = snapshot()
    flops_tok = flops_per_token(mcfg, seq_len)
    peak = peak_flops(device)
    t_last, steps_since = time.perf_counter(), 0
    waits = DataWaitClock(device, gpu_events=batches is not None)  # see its docstring
    report_wait = 0.0  # seconds the last ray.train.report blocked (see trainer.REPORT_POLL_S)
    upload_wait = 0.0  # seconds the last checkpoint waited for the previous one's upload to end
    upload_due = False  # the last report started a checkpoint upload: report it after the loop
    history: list[dict[str, float]] = []

    def batch_and_masks(rows: np.ndarray, key: int):
        """Padded tensors of ``rows`` and their masks, drawn from (seed, key) on the CPU."""
        return masked_batch(arrays, rows, seq_len, special["pad"], special_ids, mcfg, tcfg.seed, key)

    def evaluate() -> dict[str, float]:
        """Held-out instances (a seeded random slice), fixed masks; sums all-reduced."""
        model.eval()
        ev = torch.zeros(len(METRIC_NAMES), device=device, dtype=torch.float64)
        rows = eval_rows[rank::world]
        with torch.no_grad():
            for k in range(0, len(rows), micro):
                ids, types, att, m = batch_and_masks(rows[k : k + micro], -1 - k)
                g = torch.Generator(device=device)
                g.manual_seed(_seed(tcfg.seed, 999, k))
                with autocast():
                    out = model(
                        ids.to(device),
                        types.to(device),
                        att.to(device),
                        m.to(device),
                        special["mask"],
                        generator=g,
                    )
                ev += out.metrics()
        if world > 1:
            dist.all_reduce(ev)  # collective: eval sums
        model.train()
        return {f"eval_{k}": v for k, v in _rates(ev.cpu()).items()}

    # ----------------------------------------------------------------------------------- loop
    ddp_model.train()
    while prog.step < tcfg.max_steps:
        waits.start()
        cursor = prog.cursor
        rows = train_rows[global_rows(cursor, tcfg.batch_size, n_train, tcfg.seed)]
        # global-batch denominators: workers and micro-steps add up to the global mean exactly
        if batches is not None:
            b = batches.take(cursor)
            g_ids, g_types, g_att, masks = b.ids, b.types, b.att, b.masks
            gen_den, disc_den = b.gen_den, b.disc_den
        else:
            g_ids, g_types, g_att, masks = batch_and_masks(rows, cursor)
            gen_den = masks.valid.sum().clamp(min=1).to(device, torch.float32)
            disc_den = g_att.sum().clamp(min=1).to(device, torch.float32)
        digest += rows_digest(rows[lo : lo + share], cursor)
        waits.built()
        for a in range(accum):
            r0, r1 = lo + a * micro, lo + (a + 1) * micro
            ids, types, att = g_ids[r0:r1].to(device), g_types[r0:r1].to(device), g_att[r0:r1].to(device)
            chunk = (
                r0 // micro
            )  # global micro-batch index: the same rows get the same noise at any world size
            hook = float("nan") if cursor in inject else 1.0  # the non-finite test hook
            if fast is not None:  # its all-reduce sums the ranks' gradients
                fast.micro_step(
                    ids,
                    types,
                    att,
                    masks.rows(r0, r1).to(device),
                    gen_den,
                    disc_den,
                    seed=_seed(tcfg.seed, cursor, chunk),
                    scale=hook,
                )
                continue
            sync = a == accum - 1 or world == 1
            # DDP averages gradients over ranks: the loss is scaled back to a sum, so the step's
            # gradient is the gradient of the global-batch mean loss
            scale = world * hook
            torch.manual_seed(_seed(tcfg.seed, cursor, chunk))  # dropout
            gumbel = torch.Generator(device=device)
            gumbel.manual_seed(_seed(tcfg.seed, cursor, chunk, 1))
            with (
                nullcontext() if sync or not hasattr(ddp_model, "no_sync") else ddp_model.no_sync(),
                autocast(),
            ):
                out = ddp_model(
                    ids,
                    types,
                    att,
                    masks.rows(r0, r1).to(device),
                    special["mask"],
                    generator=gumbel,
                    gen_denominator=gen_den,
                    disc_denominator=disc_den,
                )
                (out.loss * scale).backward()
            acc += out.metrics()
        if fast is not None:
            fast.step(opt.param_groups[0]["lr"])  # clip, skip if non-finite, update: on the device
            grad_norm = fast.grad_norm
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(ddp_model.parameters(), tcfg.clip_norm)
            ok = torch.isfinite(grad_norm)  # the same on every rank: gradients are all-reduced
            opt.step(ok=ok)  # a non-finite step changes nothing (no host sync)
            bad += (~ok).double()
            opt.zero_grad(set_to_none=True)
        sched.step()
        waits.done()
        prog.step += 1
        prog.cursor += 1
        if batches is not None and prog.step < tcfg.max_steps:
            batches.ahead(prog.cursor)
        steps_since += 1
        step = prog.step

        # ------------------------------------------------------------ report (the only host sync)
        want_ckpt = step % tcfg.checkpoint_every == 0 or step == tcfg.max_steps
        if not (step % tcfg.log_every == 0 or want_ckpt or step % tcfg.eval_every == 0):
            continue
        sums = torch.cat(
            [acc, bad.view(1), torch.tensor([float(digest)], device=device, dtype=torch.float64)]
        )
        if world > 1:
            dist.all_reduce(sums)  # collective: metric sums
        sums = sums.cpu()  # host sync
        metrics = _rates(sums[: len(METRIC_NAMES)])
        # every rank counts the same skipped steps (the gradient norm is all-reduced)
        n_bad, window_digest = round(float(sums[-2]) / world), int(sums[-1])
        acc.zero_()
        bad.zero_()
        digest = 0
        dt = time.perf_counter() - t_last
        data_wait = waits.take()
        prog.tokens_seen += int(metrics["tokens"])
        prog.nonfinite_steps += n_bad
        since_ckpt_bad += n_bad
        tokens_s = metrics.pop("tokens") / dt
        metrics.update(
            step=step,
            loss=metrics["gen_loss"] + mcfg.disc_weight * metrics["disc_loss"],
            lr=sched.get_last_lr()[0],
            grad_norm=float(grad_norm),
            tokens_per_s=tokens_s,
            steps_per_s=steps_since / dt,
            tflops_per_s=tokens_s * flops_tok / 1e12,
            data_wait_share=data_wait / dt,  # see DataWaitClock
            report_wait_share=report_wait / dt,
            upload_wait_share=upload_wait / dt,  # rank 0 waiting for a checkpoint upload to end
            workers=world,
            eta_s=(tcfg.max_steps - step) / max(steps_since / dt, 1e-9),
            tokens_seen=prog.tokens_seen,
            data_batch=prog.cursor,
            sample_digest=window_digest,
            nonfinite_steps=prog.nonfinite_steps,
            rollbacks=prog.rollbacks,
            time=time.time(),
        )
        if peak:
            metrics["mfu"] = tokens_s * flops_tok / (peak * world)
        if n_bad and rank == 0:
            print(
                f"step {step}: {n_bad} non-finite step(s) skipped since the last report "
                f"({since_ckpt_bad} since the last checkpoint, {prog.nonfinite_steps} in all)",
                flush=True,
            )
        if tcfg.nonfinite_rollback and since_ckpt_bad >= tcfg.nonfinite_rollback:
            if prog.rollbacks >= tcfg.max_rollbacks:
                raise RuntimeError(
                    f"step {step}: {since_ckpt_bad} non-finite steps since the last checkpoint, and "
                    f"{prog.rollbacks} rollback(s) already: the run keeps diverging; lower --lr or "
                    "check the data (the run folder keeps its last good checkpoint)"
                )
            back = last_good
            model.load_state_dict(back["model"])
            model.tie()
            opt.load_state_dict(back["optimizer"])
            if fast is not None:
                fast.bind_optimizer_state()  # into the captured buffers
            sched.load_state_dict(back["scheduler"])
            prog.step = back["step"]
            prog.rollbacks += 1
            since_ckpt_bad = 0
            metrics["rolled_back_to"] = prog.step
            metrics["rollbacks"] = prog.rollbacks
            want_ckpt = False
            if rank == 0:
                print(
                    f"step {step}: rolled back to step {prog.step} (the last checkpoint) after repeated "
                    f"non-finite losses; skipping data batches {prog.cursor - (step - prog.step)}–"
                    f"{prog.cursor - 1} (rollback {prog.rollbacks} of at most {tcfg.max_rollbacks})",
                    flush=True,
                )
        elif step % tcfg.eval_every == 0 or step == tcfg.max_steps:
            metrics.update(evaluate())
        t_last, steps_since = time.perf_counter(), 0
        history.append(metrics)
        if rank == 0:
            print(
                f"step {step:>7} | loss {metrics['loss']:.4f} (gen {metrics['gen_loss']:.3f}, disc {metrics['disc_loss']:.4f}) "
                f"| gen acc {metrics['gen_acc']:.3f} disc acc {metrics['disc_acc']:.3f} | lr {metrics['lr']:.2e} "
                f"| {metrics['tokens_per_s']:.0f} tok/s | wait {100 * metrics['data_wait_share']:.1f}% | eta {metrics['eta_s'] / 60:.1f} min",
                flush=True,
            )
        if want_ckpt:
            since_ckpt_bad = 0
            last_good = snapshot()
        checkpoint = None  # an uploaded checkpoint not yet reported (rank 0)
        upload_wait = 0.0
        if want_ckpt and rank == 0:
            folder = local_checkpoint_folder()  # deleted after the upload
            save_checkpoint(
                folder,
                model_state=last_good["model"]
                if last_good
                else {k: v.detach().cpu() for k, v in model.state_dict().items()},
                train_state={
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "step": step,
                    "progress": prog.state_dict(tcfg.batch_size),
                    "rng": rng_state(),
                },
                step=step,
                model_config=mcfg.to_dict(),
                train_config=tcfg.to_dict(),
            )
            t_wait = time.perf_counter()
            checkpoint = uploads.finished(wait=True)  # the previous checkpoint's upload must end first
            upload_wait = time.perf_counter() - t_wait
            if upload_wait > 1.0:
                print(
                    f"step {step}: waited {upload_wait:.1f} s for the previous checkpoint's upload",
                    flush=True,
                )
            uploads.start(folder, f"step_{step:08d}")
        elif rank == 0:
            checkpoint = uploads.finished()
        upload_due = want_ckpt
        t_report = time.perf_counter()
        ray.train.report(
            metrics,
            checkpoint=checkpoint,
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.NO_UPLOAD,
        )
        report_wait = time.perf_counter() - t_report
    if upload_due:  # every rank reports once more: the last checkpoint, once rank 0's upload has ended
        ray.train.report(
            history[-1],
            checkpoint=uploads.finished(wait=True) if rank == 0 else None,
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.NO_UPLOAD,
        )
    return {
        "step": prog.step,
        "history": history,
        "rank": rank,
        "pid": os.getpid(),
        "progress": prog.state_dict(tcfg.batch_size),
        "fast_step": compiled,
    }
