"""Export: a run folder's checkpoint → HF discriminator/generator folders (local and S3), and the job CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest
import torch
from conftest import ROOT

from electra_ray import storage
from electra_ray.config import model_preset
from electra_ray.export import SNAPSHOT_FILE, ExportError, export_run
from electra_ray.model.electra import ElectraPretrainer
from electra_ray.train.checkpoint import save_checkpoint

SENTENCE = "東京大学で自然言語処理の研究をしています。"
MASKED = "東京大学で[MASK]の研究をしています。"


@pytest.fixture(scope="module")
def vocab():
    from electra_ray.config import CleanConfig
    from electra_ray.data.corpus import ShardStats, clean_page
    from electra_ray.tokenization.mecab import pretokenize
    from electra_ray.tokenization.vocab import train_wordpiece
    from electra_ray.wiki.dump import article_drop_reason
    from electra_ray.wiki.sample import read_sample_pages

    counts: Counter = Counter()
    for p in read_sample_pages(os.path.join(ROOT, "data", "sample", "pages")):
        if article_drop_reason(p) is None:
            for s in clean_page(p, CleanConfig(), ShardStats()) or []:
                counts.update(pretokenize(s))
    words, _ = train_wordpiece(counts, vocab_size=2000, limit_alphabet=700)
    return words


def _perturb(model: ElectraPretrainer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # shared tensors once: the tying stays
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def run(vocab, tmp_path_factory):
    """A run folder with tokenizer/ and checkpoints at steps 100 and 200; and the in-memory models."""
    from electra_ray.tokenization.vocab import write_tokenizer_folder

    torch.manual_seed(0)
    cfg = model_preset("tiny", vocab_size=len(vocab), pad_token_id=vocab.index("[PAD]"))
    folder = str(tmp_path_factory.mktemp("runs") / "r1")
    write_tokenizer_folder(os.path.join(folder, "tokenizer"), vocab, {"test": True})
    models = {}
    model = ElectraPretrainer(cfg).eval()
    for step in (100, 200):
        _perturb(model, step)
        model.check_tying()
        save_checkpoint(
            os.path.join(folder, f"step_{step:08d}"),
            model_state=model.state_dict(),
            train_state={"step": step},
            step=step,
            model_config=cfg.to_dict(),
            train_config={},
        )
        copy = ElectraPretrainer(cfg).eval()
        copy.load_state_dict(model.state_dict())
        models[step] = copy
    return folder, models


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    folder, _ = run
    out = str(tmp_path_factory.mktemp("hf") / "hf")
    return export_run(folder, out), out


def _files(root: str) -> dict[str, bytes]:
    out = {}
    for base, _, names in os.walk(root):
        for n in names:
            p = os.path.join(base, n)
            out[os.path.relpath(p, root).replace(os.sep, "/")] = open(p, "rb").read()
    return out


def _copy_run(run_folder: str, dest) -> str:
    shutil.copytree(run_folder, dest)
    return str(dest)


# ---------------------------------------------------------------------------------------------


def test_export_loads_and_matches_the_in_memory_models(run, exported):
    from transformers import (
        AutoModelForMaskedLM,
        AutoModelForPreTraining,
        AutoTokenizer,
        BertJapaneseTokenizer,
        ElectraForMaskedLM,
        ElectraForPreTraining,
        pipeline,
    )

    folder, models = run
    result, out = exported
    assert result["step"] == 200 and result["selected_by"] == "folders"
    assert result["checkpoint"] == f"{folder}/step_00000200"
    assert result["generator"] == f"{out}/generator" and result["discriminator"] == f"{out}/discriminator"
    assert sorted(os.listdir(out)) == ["discriminator", "export.json", "generator"]
    assert not [n for n in os.listdir(os.path.dirname(out)) if n != "hf"], "no temp folder left beside"
    for name in ("discriminator", "generator"):
        names = set(os.listdir(os.path.join(out, name)))
        assert {
            "config.json",
            "model.safetensors",
            "vocab.txt",
            "tokenizer_config.json",
            "special_tokens_map.json",
        } <= names
        assert not any(n.endswith(".bin") for n in names)
    record = json.load(open(os.path.join(out, "export.json")))
    assert record["step"] == 200 and record["run"] == folder and record["model"]["vocab_size"] == 2000

    disc = AutoModelForPreTraining.from_pretrained(f"{out}/discriminator")
    gen = AutoModelForMaskedLM.from_pretrained(f"{out}/generator")
    tok = AutoTokenizer.from_pretrained(f"{out}/generator")
    assert isinstance(disc, ElectraForPreTraining) and isinstance(gen, ElectraForMaskedLM)
    assert isinstance(tok, BertJapaneseTokenizer) and len(tok) == 2000
    assert tok.model_max_length == 128  # lowered to the tiny model's position table

    enc = tok(SENTENCE, return_tensors="pt")
    assert (enc["input_ids"] > 14).sum() >= 8  # mostly real pieces (the 2000-entry vocab has a few [UNK])
    ref = models[200]
    with torch.no_grad():
        torch.testing.assert_close(disc(**enc).logits, ref.discriminator(**enc).logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(gen(**enc).logits, ref.generator(**enc).logits, atol=1e-5, rtol=0)
    # the output layer is tied to the word embeddings (by storage, not only by value)
    assert gen.generator_lm_head.weight.data_ptr() == gen.electra.embeddings.word_embeddings.weight.data_ptr()
    # the discriminator got the shared embeddings
    torch.testing.assert_close(
        disc.electra.embeddings.word_embeddings.weight,
        gen.electra.embeddings.word_embeddings.weight,
        atol=0,
        rtol=0,
    )

    fill = pipeline("fill-mask", model=f"{out}/generator", top_k=5)
    preds = fill(MASKED)
    assert len(preds) == 5 and all(isinstance(p["token_str"], str) and p["score"] >= 0 for p in preds)


def test_step_selects_an_older_checkpoint_and_replaces_an_earlier_export(run, tmp_path):
    from transformers import AutoModelForPreTraining

    folder, models = run
    out = str(tmp_path / "hf")
    first = export_run(folder, out)
    assert first["step"] == 200
    r = export_run(folder, out, step=100)  # over the earlier export
    assert r["step"] == 100 and r["selected_by"] == "step" and r["checkpoint"].endswith("step_00000100")
    assert json.load(open(os.path.join(out, "export.json")))["step"] == 100
    assert sorted(os.listdir(tmp_path)) == ["hf"]
    disc = AutoModelForPreTraining.from_pretrained(f"{out}/discriminator")
    ref = models[100].discriminator.state_dict()
    for k, v in disc.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_errors_name_the_run_folder(run, vocab, tmp_path):
    folder, _ = run
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExportError, match=rf"{empty}: no checkpoints"):
        export_run(str(empty), str(tmp_path / "o"))
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        export_run(str(tmp_path / "nothing"), str(tmp_path / "o"))
    with pytest.raises(
        ExportError,
        match=rf"{folder}: step 150: no complete checkpoint folder step_00000150.*complete steps: \[100, 200\]",
    ):
        export_run(folder, str(tmp_path / "o"), step=150)

    no_tok = _copy_run(folder, tmp_path / "no_tok")
    shutil.rmtree(os.path.join(no_tok, "tokenizer"))
    with pytest.raises(ExportError, match=rf"{no_tok}: the tokenizer folder .* is missing vocab.txt"):
        export_run(no_tok, str(tmp_path / "o"))

    bad_vocab = _copy_run(folder, tmp_path / "bad_vocab")
    with open(os.path.join(bad_vocab, "tokenizer", "vocab.txt"), "a", encoding="utf-8") as f:
        f.write("余分\n")
    with pytest.raises(
        ExportError, match=rf"{bad_vocab}: the tokenizer has 2001 entries but the model's vocab_size is 2000"
    ):
        export_run(bad_vocab, str(tmp_path / "o"))

    # an incomplete (no meta.json) higher folder is skipped
    partial = _copy_run(folder, tmp_path / "partial")
    os.makedirs(os.path.join(partial, "step_00000300"))
    shutil.copy(os.path.join(partial, "step_00000200", "model.pt"), os.path.join(partial, "step_00000300"))
    assert export_run(partial, str(tmp_path / "o"))["step"] == 200

    # an output folder that holds other things is not replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an export"):
        export_run(folder, str(other))
    assert (other / "keep.txt").read_text() == "mine"
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n], "failed exports leave no temp folder"


def _snapshot(latest: str | None, results: list[str]) -> dict:
    """A checkpoint_manager_snapshot.json as Ray Train 2.60 (V2) writes it (_CheckpointManagerState.json())."""

    def entry(name):
        return {"version": 0, "checkpoint_dir_name": name, "metrics": {"step": int(name.split("_")[1])}}

    return {
        "ray_version": "2.60.0",
        "checkpoint_results": [entry(n) for n in results],
        "checkpoint_report_indices": list(range(len(results))),
        "latest_checkpoint_result": entry(latest) if latest else None,
        "pending_training_results": [],
        "pending_validation_specs": [],
        "current_report_index": len(results),
        "validated_checkpoint_dir_names": [],
        "timed_out_validation_checkpoint_dir_names": [],
        "failed_validation_checkpoint_dir_names": [],
    }


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's own pydantic v1-style calls
def test_snapshot_decides_and_uncommitted_folders_are_ignored(run, tmp_path):
    folder, _ = run
    r = _copy_run(folder, tmp_path / "r1")
    # a complete-looking step_00000300 that Ray has not registered (upload finished, report not yet)
    shutil.copytree(os.path.join(r, "step_00000200"), os.path.join(r, "step_00000300"))
    meta_path = os.path.join(r, "step_00000300", "meta.json")
    meta = json.load(open(meta_path))
    meta["step"] = 300
    json.dump(meta, open(meta_path, "w"))
    assert export_run(r, str(tmp_path / "a"))["step"] == 300  # without a snapshot: the highest folder

    snap = _snapshot("step_00000200", ["step_00000100", "step_00000200"])
    with open(os.path.join(r, SNAPSHOT_FILE), "w") as f:
        json.dump(snap, f)
    res = export_run(r, str(tmp_path / "b"))
    assert res["step"] == 200 and res["selected_by"] == "snapshot"
    # Ray Train reads the hand-written file as its own and picks the same checkpoint (no Ray started)
    from ray.train.v2.api.result import Result

    assert Result.from_path(r).checkpoint.path == res["checkpoint"]
    assert export_run(r, str(tmp_path / "c"), step=100)["step"] == 100
    with pytest.raises(ExportError, match="step 300: the folder step_00000300 exists but is not committed"):
        export_run(r, str(tmp_path / "d"), step=300)

    # checkpoint_results sorted by score (not by time): the latest is still latest_checkpoint_result
    with open(os.path.join(r, SNAPSHOT_FILE), "w") as f:
        json.dump(_snapshot("step_00000100", ["step_00000200", "step_00000100"]), f)
    assert export_run(r, str(tmp_path / "e"))["step"] == 100

    with open(os.path.join(r, SNAPSHOT_FILE), "w") as f:
        json.dump(_snapshot(None, []), f)
    with pytest.raises(ExportError, match="lists no committed checkpoint"):
        export_run(r, str(tmp_path / "f"))
    # a listed checkpoint that is gone
    with open(os.path.join(r, SNAPSHOT_FILE), "w") as f:
        json.dump(_snapshot("step_00000400", ["step_00000400"]), f)
    with pytest.raises(ExportError, match="lists step_00000400 but .*meta.json is missing"):
        export_run(r, str(tmp_path / "g"))


def test_s3_run_to_s3_output_gives_the_same_files(run, exported, bucket):
    folder, _ = run
    _, local_out = exported
    remote_run = f"{bucket}/runs/r1"
    for rel, data in _files(folder).items():
        if not rel.endswith("train_state.pt"):  # export never needs it
            storage.write_bytes(f"{remote_run}/{rel}", data)
    remote_out = f"{bucket}/hf"
    r = export_run(remote_run, remote_out)
    assert r["step"] == 200 and r["generator"] == f"{remote_out}/generator"

    fs, path = storage.filesystem(remote_out)
    remote = {p[len(path) + 1 :]: fs.cat_file(p) for p in fs.find(path)}
    local = _files(local_out)
    assert sorted(remote) == sorted(local)
    for rel in local:
        if rel != "export.json":
            assert remote[rel] == local[rel], rel
    rec_r, rec_l = json.loads(remote["export.json"]), json.loads(local["export.json"])
    assert rec_r["run"] == remote_run and rec_r["checkpoint"] == f"{remote_run}/step_00000200"
    for k in ("run", "checkpoint"):
        rec_r.pop(k), rec_l.pop(k)
    assert rec_r == rec_l

    # again, over the earlier export, with --step; the marker is rewritten last
    assert export_run(remote_run, remote_out, step=100)["step"] == 100
    assert storage.read_json(f"{remote_out}/export.json")["step"] == 100


def _job(*args):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "jobs", "export.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli(run, tmp_path):
    folder, _ = run
    p = _job("--run", folder, "--output", str(tmp_path / "hf"))
    assert p.returncode == 0, p.stderr[-2000:]
    last = json.loads(p.stdout.strip().splitlines()[-1])
    assert last["ok"] is True and last["step"] == 200
    assert last["generator"] == str(tmp_path / "hf" / "generator")
    assert os.path.isfile(tmp_path / "hf" / "generator" / "model.safetensors")

    bad = _job("--run", str(tmp_path / "nothing"), "--output", str(tmp_path / "o"))
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert f"error: {tmp_path / 'nothing'}: no such run folder" in bad.stderr
    assert json.loads(bad.stdout.strip().splitlines()[-1])["ok"] is False
