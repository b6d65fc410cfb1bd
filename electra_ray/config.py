"""Typed, frozen job configs.

Every job builds one config object from its flags, prints it at start and saves it beside its
output (and inside every checkpoint, later). The pattern:

- keyword-only frozen dataclasses, one docstring line per field (``field(metadata={"help": ...})``);
- ``validate()`` runs in ``__post_init__`` and raises :class:`ConfigError` with a message that says
  what to change;
- ``from_dict`` rejects unknown keys, so a config saved by another version fails loudly instead of
  being half-read;
- ``fingerprint()`` is a short stable hash of the settings that change the output, used to refuse
  mixing two different runs in one output folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T", bound="Config")


class ConfigError(ValueError):
    """A config value is invalid; the message says which field and what to change."""


class FastStepError(RuntimeError):
    """The fast training step could not start on a worker's node (its compile or CUDA graph
    capture failed); the message names the node, the cause and the flag that avoids it."""


@dataclass(frozen=True, kw_only=True)
class Config:
    """Base class: validation, dict round-trip, fingerprint."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # pragma: no cover - overridden
        pass

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown keys {unknown}; known keys are {sorted(names)}")
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                v = data[f.name]
                # JSON has no tuples: turn lists back into tuples where the field is a tuple.
                if isinstance(v, list) and str(f.type).startswith("tuple"):
                    v = tuple(v)
                values[f.name] = v
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2, sort_keys=True)

    def fingerprint(self, exclude: tuple[str, ...] = ()) -> str:
        data = {k: v for k, v in self.to_dict().items() if k not in exclude}
        blob = json.dumps(data, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def describe(self) -> str:
        """Human-readable listing, one field a line, for the job's start banner."""
        lines = [f"{type(self).__name__}:"]
        for f in dataclasses.fields(self):
            lines.append(f"  {f.name} = {getattr(self, f.name)!r}")
        return "\n".join(lines)


def help_of(cls: type[Config], name: str) -> str:
    """The help text of a config field (used by the jobs' argparse flags)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(name)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True, kw_only=True)
class CleanConfig(Config):
    """How wikitext becomes sentences (wiki/clean.py, wiki/sentences.py)."""

    min_sentence_chars: int = field(
        default=5, metadata={"help": "drop sentences shorter than this (characters, after NFKC)"}
    )
    max_sentence_chars: int = field(
        default=1000, metadata={"help": "drop sentences longer than this (characters, after NFKC)"}
    )
    keep_list_items: bool = field(
        default=True, metadata={"help": "keep list items that are whole sentences (end in 。！？)"}
    )
    max_page_bytes: int = field(
        default=4_000_000, metadata={"help": "skip pages whose wikitext is larger (UTF-8 bytes)"}
    )
    max_page_seconds: float = field(
        default=5.0, metadata={"help": "skip a page whose cleaning takes longer than this"}
    )

    def validate(self) -> None:
        _check(
            self.min_sentence_chars >= 1, f"min_sentence_chars must be >= 1, got {self.min_sentence_chars}"
        )
        _check(
            self.max_sentence_chars > self.min_sentence_chars,
            f"max_sentence_chars ({self.max_sentence_chars}) must be larger than min_sentence_chars ({self.min_sentence_chars})",
        )
        _check(self.max_page_bytes > 0, f"max_page_bytes must be positive, got {self.max_page_bytes}")
        _check(self.max_page_seconds > 0, f"max_page_seconds must be positive, got {self.max_page_seconds}")


@dataclass(frozen=True, kw_only=True)
class CorpusConfig(Config):
    """jobs/prepare_corpus.py: dump → Parquet corpus shards."""

    dump: str = field(
        metadata={"help": "the dump: .xml, .xml.bz2 or multistream .xml.bz2 (local path or s3://)"}
    )
    output: str = field(metadata={"help": "output folder (local path or s3://bucket/prefix)"})
    index: str | None = field(
        default=None, metadata={"help": "multistream index (-index.txt.bz2); enables parallel ranged reads"}
    )
    pages_per_shard: int = field(
        default=10_000,
        metadata={"help": "dump pages per output shard (fixed by the data, not the worker count)"},
    )
    formats: tuple[str, ...] = field(
        default=("parquet",),
        metadata={"help": "outputs: parquet always; 'text' adds one-sentence-a-line files"},
    )
    max_workers: int | None = field(
        default=None, metadata={"help": "most parallel cleaners (default: the cluster's CPUs)"}
    )
    clean: CleanConfig = field(default_factory=CleanConfig, metadata={"help": "cleaning settings"})

    def validate(self) -> None:
        _check(bool(self.dump), "--dump is required")
        _check(bool(self.output), "--output is required")
        _check(self.pages_per_shard >= 1, f"pages_per_shard must be >= 1, got {self.pages_per_shard}")
        bad = sorted(set(self.formats) - {"parquet", "text"})
        _check(not bad, f"unknown output format(s) {bad}; choose from 'parquet', 'text'")
        _check(
            "parquet" in self.formats, "the parquet output is always written; formats must include 'parquet'"
        )
        _check(
            self.max_workers is None or self.max_workers >= 1,
            f"max_workers must be >= 1, got {self.max_workers}",
        )
        if isinstance(self.clean, dict):  # from_dict of a saved config
            object.__setattr__(self, "clean", CleanConfig.from_dict(self.clean))

    def output_fingerprint(self) -> str:
        """What decides the shards' content; a relaunch must match it to reuse finished shards."""
        data = {
            "pages_per_shard": self.pages_per_shard,
            "formats": sorted(self.formats),
            "clean": self.clean.to_dict(),
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class TokenizerConfig(Config):
    """jobs/train_tokenizer.py: corpus → WordPiece vocabulary folder (BertJapaneseTokenizer, MeCab ipadic)."""

    corpus: str = field(metadata={"help": "corpus folder written by prepare_corpus (local or s3://)"})
    output: str = field(metadata={"help": "tokenizer folder to write (local or s3://)"})
    vocab_size: int = field(default=32768, metadata={"help": "vocabulary size, special tokens included"})
    min_frequency: int = field(default=2, metadata={"help": "a merge must occur at least this often"})
    limit_alphabet: int = field(
        default=6129, metadata={"help": "most single characters kept in the alphabet"}
    )
    special_order: str = field(
        default="released",
        metadata={"help": "'released' ([UNK]=0 … [MASK]=4, <unused0..9>) or 'pad-first' ([PAD]=0)"},
    )
    heldout_fraction: float = field(
        default=0.01,
        metadata={"help": "share of pages (by page id) kept out of counting, to measure the UNK rate"},
    )
    unk_eval_sentences: int = field(
        default=20000, metadata={"help": "most held-out sentences encoded for the UNK rate"}
    )
    max_workers: int | None = field(
        default=None, metadata={"help": "most MeCab actors (default: the cluster's CPUs)"}
    )

    def validate(self) -> None:
        _check(bool(self.corpus), "--corpus is required")
        _check(bool(self.output), "--output is required")
        _check(self.vocab_size >= 64, f"vocab_size must be at least 64, got {self.vocab_size}")
        _check(self.min_frequency >= 1, f"min_frequency must be >= 1, got {self.min_frequency}")
        _check(self.limit_alphabet >= 1, f"limit_alphabet must be >= 1, got {self.limit_alphabet}")
        _check(
            self.special_order in ("released", "pad-first"),
            f"special_order must be 'released' or 'pad-first', got {self.special_order!r}",
        )
        _check(
            0 <= self.heldout_fraction < 0.5,
            f"heldout_fraction must be in [0, 0.5), got {self.heldout_fraction}",
        )
        _check(
            self.max_workers is None or self.max_workers >= 1,
            f"max_workers must be >= 1, got {self.max_workers}",
        )


@dataclass(frozen=True, kw_only=True)
class InstancesConfig(Config):
    """jobs/tokenize_corpus.py: corpus + tokenizer → packed pretraining instances (Parquet)."""

    corpus: str = field(metadata={"help": "corpus folder written by prepare_corpus (local or s3://)"})
    tokenizer: str = field(metadata={"help": "tokenizer folder written by train_tokenizer (local or s3://)"})
    output: str = field(metadata={"help": "instances folder to write (local or s3://)"})
    max_seq_length: int = field(
        default=128, metadata={"help": "tokens per instance, [CLS] and [SEP]s included"}
    )
    short_seq_prob: float = field(
        default=0.05, metadata={"help": "share of instances packed to a shorter random length"}
    )
    seed: int = field(
        default=12345, metadata={"help": "packing seed (instances depend on it and the page id only)"}
    )
    ids_dtype: str = field(
        default="auto",
        metadata={
            "help": "'auto' (uint16 when the vocab fits), 'uint16' (error if it does not fit) or 'int32'"
        },
    )
    max_workers: int | None = field(
        default=None, metadata={"help": "most encoder actors (default: the cluster's CPUs)"}
    )

    def validate(self) -> None:
        for name in ("corpus", "tokenizer", "output"):
            _check(bool(getattr(self, name)), f"--{name} is required")
        _check(
            8 <= self.max_seq_length <= 4096,
            f"max_seq_length must be in [8, 4096], got {self.max_seq_length}",
        )
        _check(
            0.0 <= self.short_seq_prob <= 1.0, f"short_seq_prob must be in [0, 1], got {self.short_seq_prob}"
        )
        _check(
            self.ids_dtype in ("auto", "uint16", "int32"),
            f"ids_dtype must be auto, uint16 or int32, got {self.ids_dtype!r}",
        )
        _check(
            self.max_workers is None or self.max_workers >= 1,
            f"max_workers must be >= 1, got {self.max_workers}",
        )

    def output_fingerprint(self, tokenizer_sha256: str) -> str:
        data = {
            k: getattr(self, k) for k in ("corpus", "max_seq_length", "short_seq_prob", "seed", "ids_dtype")
        }
        data["tokenizer_sha256"] = tokenizer_sha256
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


ATTENTION_INITS = ("reference", "local")


@dataclass(frozen=True, kw_only=True)
class ModelConfig(Config):
    """Generator + discriminator dimensions and the ELECTRA objective (model/electra.py)."""

    vocab_size: int = field(default=32768, metadata={"help": "vocabulary size (from the tokenizer)"})
    pad_token_id: int = field(default=3, metadata={"help": "[PAD] id (from the tokenizer)"})
    embedding_size: int = field(default=128, metadata={"help": "shared word/position/type embedding width"})
    hidden_size: int = field(default=256, metadata={"help": "discriminator width"})
    num_layers: int = field(default=12, metadata={"help": "discriminator layers"})
    num_heads: int = field(default=4, metadata={"help": "discriminator attention heads"})
    intermediate_size: int = field(default=1024, metadata={"help": "discriminator FFN width"})
    gen_hidden_size: int = field(default=64, metadata={"help": "generator width"})
    gen_num_layers: int = field(default=12, metadata={"help": "generator layers"})
    gen_num_heads: int = field(default=1, metadata={"help": "generator attention heads"})
    gen_intermediate_size: int = field(default=256, metadata={"help": "generator FFN width"})
    max_position_embeddings: int = field(default=512, metadata={"help": "position table size"})
    type_vocab_size: int = field(default=2, metadata={"help": "segment (token type) table size"})
    dropout: float = field(default=0.1, metadata={"help": "hidden and attention dropout"})
    layer_norm_eps: float = field(default=1e-12, metadata={"help": "LayerNorm epsilon"})
    initializer_range: float = field(default=0.02, metadata={"help": "init std"})
    attention_init: str = field(
        default="reference",
        metadata={
            "help": "reference: transformers' init (normal, initializer_range); local: sinusoidal position "
            "embeddings and each layer's key weights a copy of its query weights, so attention starts on "
            "nearby tokens (model/electra.py: local_attention_init)"
        },
    )
    mask_prob: float = field(default=0.15, metadata={"help": "share of (non-special) tokens masked"})
    mask_token_prob: float = field(
        default=0.85, metadata={"help": "share of masked positions shown as [MASK] (the rest unchanged)"}
    )
    disc_weight: float = field(
        default=50.0, metadata={"help": "loss = generator + disc_weight × discriminator"}
    )
    temperature: float = field(default=1.0, metadata={"help": "Gumbel-max sampling temperature"})

    def validate(self) -> None:
        _check(self.vocab_size > 5, f"vocab_size must be > 5, got {self.vocab_size}")
        _check(
            0 <= self.pad_token_id < self.vocab_size, f"pad_token_id {self.pad_token_id} is outside the vocab"
        )
        for d, h in ((self.hidden_size, self.num_heads), (self.gen_hidden_size, self.gen_num_heads)):
            _check(d % h == 0, f"width {d} is not divisible by {h} attention heads")
        _check(0 < self.mask_prob < 1, f"mask_prob must be in (0, 1), got {self.mask_prob}")
        _check(
            0 <= self.mask_token_prob <= 1, f"mask_token_prob must be in [0, 1], got {self.mask_token_prob}"
        )
        _check(self.temperature > 0, f"temperature must be positive, got {self.temperature}")
        _check(
            self.attention_init in ATTENTION_INITS,
            f"attention_init must be one of {ATTENTION_INITS}, got {self.attention_init!r}",
        )

    def max_predictions(self, seq_len: int) -> int:
        """Masked slots per sequence (static shapes): round(mask_prob · L)."""
        return max(1, int(round(self.mask_prob * seq_len)))


MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # the seed model (izumi-lab ELECTRA-small, paper-size generator: 1/4 of the discriminator's width)
    "small": {},
    # the released variant with a same-size generator
    "small-samegen": {"gen_hidden_size": 256, "gen_num_heads": 4, "gen_intermediate_size": 1024},
    # ELECTRA-base (generator 1/3 wide)
    "base": {
        "embedding_size": 768,
        "hidden_size": 768,
        "num_heads": 12,
        "intermediate_size": 3072,
        "gen_hidden_size": 256,
        "gen_num_heads": 4,
        "gen_intermediate_size": 1024,
    },
    # for tests and the demo: trains on 2 CPUs in minutes. Attention that starts local, a larger init
    # and no dropout let its discriminator learn within ~1,000 steps on the demo's sample; with the
    # reference init it sits on a plateau (benchmarks/disc_probe.py). Its generator samples at
    # temperature 3: at 1 its replacements are too plausible for a 2-layer discriminator to flag any
    # within the demo's minute (held-out accuracy stays the all-"original" baseline; README, "What
    # the demo's tiny model learns", benchmarks/joint_probe.py)
    "tiny": {
        "embedding_size": 32,
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 128,
        "gen_hidden_size": 32,
        "gen_num_layers": 2,
        "gen_num_heads": 1,
        "gen_intermediate_size": 64,
        "max_position_embeddings": 128,
        "dropout": 0.0,
        "initializer_range": 0.08,
        "attention_init": "local",
        "temperature": 3.0,
    },
}


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in MODEL_PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {sorted(MODEL_PRESETS)}")
    return ModelConfig(**{**MODEL_PRESETS[name], **overrides})


FROM_TOKENIZER = ("vocab_size", "pad_token_id")


def parse_model_set(items: list[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` strings (--model-set, the probes' --set) → preset overrides, each value read
    as its ModelConfig field's type (int, float or str) where it reads as one and left as written
    otherwise: ``check_model_set`` (run by TrainConfig) says what is wrong with a field or value."""
    kinds = {f.name: type(f.default) for f in dataclasses.fields(ModelConfig)}
    out: dict[str, Any] = {}
    for item in items:
        name, eq, text = item.partition("=")
        name, text = name.strip().replace("-", "_"), text.strip()
        _check(bool(eq) and bool(name), f"--model-set {item!r}: expected FIELD=VALUE, e.g. temperature=1")
        try:
            out[name] = kinds[name](text)
        except (KeyError, ValueError):
            out[name] = text
    return out


def check_model_set(preset: str, overrides: dict[str, Any]) -> None:
    """Preset overrides must name ModelConfig fields the tokenizer does not set, with values of the
    field's type, and give a valid model."""
    kinds = {f.name: type(f.default) for f in dataclasses.fields(ModelConfig)}
    for name, value in overrides.items():
        _check(name in kinds, f"--model-set: the model has no field {name!r}; fields: {sorted(kinds)}")
        _check(name not in FROM_TOKENIZER, f"--model-set: {name} comes from the tokenizer, it cannot be set")
        kind = kinds[name]
        ok = isinstance(value, kind) or (
            kind is float and isinstance(value, int) and not isinstance(value, bool)
        )
        _check(ok, f"--model-set: {name} takes {kind.__name__} values, got {value!r}")
    if preset in MODEL_PRESETS:
        model_preset(preset, **overrides)  # the model's own checks (e.g. heads dividing the width)


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Config):
    """jobs/pretrain.py: instances → ELECTRA on Ray Train."""

    data: str | None = field(
        default=None, metadata={"help": "instances folder (tokenize_corpus output; local or s3://)"}
    )
    tokenizer: str = field(metadata={"help": "tokenizer folder the instances were made with"})
    corpus: str | None = field(
        default=None,
        metadata={"help": "instead of --data: a corpus folder, tokenized on the fly into the object store"},
    )
    max_seq_length: int = field(default=128, metadata={"help": "with --corpus: tokens per instance"})
    storage_path: str = field(metadata={"help": "where run folders live (local or s3://bucket/prefix)"})
    name: str = field(
        metadata={"help": "run name: the run folder is storage_path/name; the same name resumes"}
    )
    preset: str = field(default="small", metadata={"help": "model preset: small, small-samegen, base, tiny"})
    model_set: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "model preset overrides FIELD=VALUE, e.g. temperature=1 or mask_prob=0.25 (not "
            "vocab_size or pad_token_id: those come from the tokenizer); a run keeps them: a resume "
            "with others is refused"
        },
    )
    num_workers_min: int = field(
        default=1, metadata={"help": "fewest training workers (elastic lower bound)"}
    )
    num_workers_max: int = field(default=1, metadata={"help": "most training workers"})
    use_gpu: bool = field(
        default=False,
        metadata={
            "help": "one GPU per worker, bf16 autocast (fp32 on GPUs older than compute capability 8.0)"
        },
    )
    cpus_per_worker: int = field(
        default=1, metadata={"help": "CPUs reserved per worker (= torch threads on CPU)"}
    )
    max_steps: int = field(default=1_000_000, metadata={"help": "optimizer steps to run"})
    total_steps: int | None = field(
        default=None, metadata={"help": "steps of the lr schedule (default: max_steps)"}
    )
    batch_size: int = field(
        default=128,
        metadata={"help": "global batch: sequences per optimizer step, whatever the worker count"},
    )
    micro_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "sequences per forward pass (default: the largest divisor of the batch giving every worker one at MAX)"
        },
    )
    lr: float = field(default=5e-4, metadata={"help": "peak learning rate"})
    warmup_steps: int = field(default=10_000, metadata={"help": "linear warmup steps"})
    weight_decay: float = field(
        default=0.01, metadata={"help": "decoupled weight decay (not on bias/LayerNorm)"}
    )
    adam_betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "Adam betas"})
    adam_eps: float = field(default=1e-6, metadata={"help": "Adam epsilon"})
    clip_norm: float = field(default=1.0, metadata={"help": "gradient clipping (global norm)"})
    seed: int = field(default=42, metadata={"help": "seed of the sample order, masks and initialization"})
    checkpoint_every: int = field(default=1000, metadata={"help": "steps between checkpoints"})
    keep_checkpoints: int = field(default=3, metadata={"help": "checkpoints kept in the run folder"})
    max_failures: int = field(default=3, metadata={"help": "worker-group restarts allowed after failures"})
    log_every: int = field(
        default=100, metadata={"help": "steps between metric reports (the only host syncs)"}
    )
    eval_every: int = field(default=1000, metadata={"help": "steps between held-out evaluations"})
    eval_instances: int = field(default=256, metadata={"help": "instances held out for evaluation"})
    resize_check_s: float = field(
        default=60.0,
        metadata={
            "help": "elastic runs: seconds between checks for room to grow (a resize restarts from the last checkpoint)"
        },
    )
    nonfinite_rollback: int = field(
        default=3,
        metadata={
            "help": "non-finite steps (skipped) since the last checkpoint that make the run roll back to it "
            "and skip the batches in between (0: never roll back)"
        },
    )
    max_rollbacks: int = field(
        default=3,
        metadata={
            "help": "rollbacks allowed in the run (counted across relaunches) before it stops with an error"
        },
    )
    upload_retry_s: float = field(
        default=900.0,
        metadata={
            "help": "seconds a checkpoint upload keeps retrying unreachable storage (training goes on meanwhile)"
        },
    )
    fast_step: str = field(
        default="auto",
        metadata={
            "help": "auto|on|off: the compiled training step (static shapes, CUDA graphs, "
            "batches built on the device; docs/performance.md); auto = on with GPUs of compute "
            "capability 7.0 or newer (what Triton compiles for), off on older GPUs and on CPUs"
        },
    )
    fast_overlap: str = field(
        default="auto",
        metadata={
            "help": "auto|on|off: the fast step runs the generator's backward pass on a second CUDA "
            "stream beside the discriminator's forward and backward (small: 1.10× the steps/s on an "
            "H200); auto = on for one GPU worker, off with several (the gradient buckets' "
            "all-reduce overlaps the backward pass instead) and on CPUs"
        },
    )
    fast_fuse_linears: str = field(
        default="auto",
        metadata={
            "help": "auto|on|off: the fast step compiles each attention layer's query, key and value "
            "projections as one linear layer (144 fewer GEMMs a step for small; 1.06× its tokens/s on "
            "a 2-core CPU, not yet measured on a GPU); auto = off until it is"
        },
    )
    fast_compile_cache: str = field(
        default="on",
        metadata={
            "help": "on|off: the fast step's compiled graphs are kept in the run folder "
            "(compile_cache/), so a worker on a node that never compiled the step, or a run resumed "
            "on another cluster, loads them instead of compiling from scratch"
        },
    )
    allreduce_bucket_mb: float = field(
        default=25.0,
        metadata={
            "help": "fast step on several workers: the gradients are summed in buckets of this many MiB, "
            "each launched during the backward pass as soon as its gradients are complete "
            "(0: one all-reduce after the backward pass)"
        },
    )
    allreduce_dtype: str = field(
        default="fp32",
        metadata={
            "help": "fp32|bf16: several workers sum their gradients in this dtype (the fast step and "
            "the plain step's DDP alike); bf16 moves half the bytes, which is what limits scaling "
            "across nodes (docs/performance.md), and rounds the sum to bf16's 8 significant bits"
        },
    )
    inject_nonfinite: tuple[int, ...] = field(
        default=(), metadata={"help": "fault injection for tests: data batches whose loss is made NaN"}
    )

    def validate(self) -> None:
        for name in ("tokenizer", "storage_path", "name"):
            _check(bool(getattr(self, name)), f"--{name.replace('_', '-')} is required")
        _check(
            bool(self.data) != bool(self.corpus),
            "give either --data (instances) or --corpus (tokenized on the fly), not both",
        )
        _check(
            self.preset in MODEL_PRESETS,
            f"unknown preset {self.preset!r}; choose from {sorted(MODEL_PRESETS)}",
        )
        check_model_set(self.preset, self.model_set)
        _check(
            1 <= self.num_workers_min <= self.num_workers_max,
            f"--num-workers must be N or MIN:MAX with 1 <= MIN <= MAX, got {self.num_workers_min}:{self.num_workers_max}",
        )
        _check(self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        _check(self.cpus_per_worker >= 1, f"cpus_per_worker must be >= 1, got {self.cpus_per_worker}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        micro = self.micro_batch
        _check(
            self.batch_size % micro == 0,
            f"--micro-batch-size {micro} does not divide --batch-size {self.batch_size}",
        )
        _check(
            self.num_workers_max <= self.batch_size // micro,
            f"{self.num_workers_max} workers need at least one micro-batch each, but --batch-size "
            f"{self.batch_size} holds only {self.batch_size // micro} micro-batches of {micro}; "
            "lower --micro-batch-size or the number of workers",
        )
        for name in ("checkpoint_every", "log_every", "eval_every", "keep_checkpoints"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1")
        _check(self.max_failures >= 0, "max_failures must be >= 0")
        _check(self.nonfinite_rollback >= 0, "nonfinite_rollback must be >= 0")
        _check(self.max_rollbacks >= 0, "max_rollbacks must be >= 0")
        _check(self.upload_retry_s >= 0, "upload_retry_s must be >= 0")
        _check(self.resize_check_s >= 0, "resize_check_s must be >= 0")
        _check(
            self.allreduce_bucket_mb >= 0,
            f"--allreduce-bucket-mb must be >= 0, got {self.allreduce_bucket_mb}",
        )
        _check(
            self.allreduce_dtype in ("fp32", "bf16"),
            f"--allreduce-dtype must be fp32 or bf16, not {self.allreduce_dtype!r}",
        )
        for name in ("fast_step", "fast_overlap", "fast_fuse_linears"):
            value = getattr(self, name)
            flag = "--" + name.replace("_", "-")
            _check(value in ("auto", "on", "off"), f"{flag} must be auto, on or off, not {value!r}")
        _check(
            self.fast_compile_cache in ("on", "off"),
            f"--fast-compile-cache must be on or off, not {self.fast_compile_cache!r}",
        )

    @property
    def micro_batch(self) -> int:
        """Sequences per forward pass, the same at every world size: the flag, or the largest divisor of
        the global batch that gives every worker at least one micro-batch at the largest world size.
        The global batch's micro-batches are dealt to the workers in contiguous runs (uneven when the
        world size does not divide their number), so an elastic run may take any size in MIN..MAX."""
        if self.micro_batch_size:
            return self.micro_batch_size
        cap = max(1, self.batch_size // max(self.num_workers_max, 1))
        return max(d for d in range(1, cap + 1) if self.batch_size % d == 0)

    @property
    def schedule_steps(self) -> int:
        return self.total_steps or self.max_steps
