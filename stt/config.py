"""Typed, serialisable run configuration. A run is reproducible from its config alone."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from stt.engine_settings import EngineConfig, TransformersSettings  # each engine kind's settings
from stt.errors import ConfigError
from stt.store import is_url, mirror_root


class GenerationParams(BaseModel):
    """Everything that changes what the model writes. Part of the generation cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.0, ge=0.0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0
    # max new tokens per segment = clamp(ratio * source tokens + extra, min, cap)
    max_new_tokens_ratio: float = Field(2.0, gt=0)
    max_new_tokens_extra: int = Field(16, ge=0)
    max_new_tokens_cap: int = Field(256, ge=1)
    stop: tuple[str, ...] = ("\n",)

    def max_new_tokens(self, source_tokens: int) -> int:
        wanted = int(self.max_new_tokens_ratio * source_tokens) + self.max_new_tokens_extra
        return max(1, min(self.max_new_tokens_cap, wanted))


class PromptConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    style: Literal["completion", "chat"] = "completion"  # chat: the model's chat template (needs one)
    num_shots: int = Field(8, ge=0)
    demonstrations: Path | None = None  # jsonl with lang/question/answer like mgsm_exemplars.jsonl


# Language codes and run names become folder names (sets/self-translate-train-<lang>, runs/<name>).
_CODE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})?")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _check_codes(codes: tuple[str, ...]) -> tuple[str, ...]:
    for code in codes:
        if not _CODE.fullmatch(code):
            raise ValueError(f"language '{code}' is not a language code (de, th, zh, pt-BR, ...)")
    return codes


def _split_commas(value: object) -> object:
    """"de, th" -> ("de", "th"): a list given as one string (the command line, an environment variable)."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return value


Names = Annotated[tuple[str, ...], BeforeValidator(_split_commas)]
Languages = Annotated[tuple[str, ...], BeforeValidator(_split_commas), AfterValidator(_check_codes)]


class RoundTripConfig(BaseModel):
    """Round-trip filtering: the model translates its own translation back into English; a row whose
    back-translation scores below `min_chrf` (sentence chrF against the English source) is set aside
    with reason `round_trip` (kept restorable in the rejects, see the `self-translate-train-unfiltered` set)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    min_chrf: float = Field(35.0, ge=0.0, le=100.0)
    # Per-language thresholds: back-translations from a low-resource language score lower across the board.
    min_chrf_by_language: dict[str, float] = {}

    def threshold(self, language: str) -> float:
        return self.min_chrf_by_language.get(language, self.min_chrf)


class BadRowsConfig(BaseModel):
    """What the translate stage does with training-data rows it cannot use (stt.badrows)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["set_aside", "strict"] = "set_aside"  # strict: stop at the first bad row
    max_share: float = Field(0.01, ge=0.0, le=1.0)  # fail above this share of bad rows (a wrong file, not noise)
    max_chars: int = Field(20_000, ge=1)  # a field longer than this is set aside (no model context holds it)


class TimeoutConfig(BaseModel):
    """How long a model-holding task may run before it counts as hung (Prefect `timeout_seconds`), derived
    from its size: floor (model load) + the work at a throughput well below the slowest expected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    floor_s: float = Field(900.0, gt=0)
    min_tokens_per_s: float = Field(2.0, gt=0)  # generation: every segment running to the token cap at this rate
    min_items_per_s: float = Field(0.2, gt=0)  # scoring
    max_step_s: float = Field(120.0, gt=0)  # one optimizer step
    retries: int = Field(2, ge=0)
    retry_delays_s: tuple[float, ...] = (10.0, 60.0)


class TranslationSettings(BaseModel):
    """What a translation needs besides its task and where it goes: shared by `TranslateConfig` (one task, `stt
    translate`) and `RunConfig` (every task of a run)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    languages: Languages = ("de", "th")
    limit: int | None = Field(None, ge=1)  # first N English training examples per task (translated); None = all
    data_dir: Path | None = None  # default: $STT_DATA_DIR, else ../shared/data beside the repo
    shard_size: int = Field(16, ge=1)
    engine: EngineConfig = TransformersSettings()
    generation: GenerationParams = GenerationParams()
    prompt: PromptConfig = PromptConfig()
    round_trip: RoundTripConfig = RoundTripConfig()  # the translate stage's round-trip filter
    bad_rows: BadRowsConfig = BadRowsConfig()  # training-data rows the loaders cannot use
    timeouts: TimeoutConfig = TimeoutConfig()  # when a model-holding task counts as hung

    def resolved_data_dir(self) -> Path:
        return resolve_data_dir(self.data_dir)


class TranslateConfig(TranslationSettings):
    """What the translate stage needs to know. Saved next to its outputs."""

    task: str = "gsm8k"
    input_path: Path | None = None  # a file in the task's release format; default: the task's file in data_dir
    out_dir: Path = Path("runs/translate")

    def resolved_input(self) -> Path | None:
        """The training file: as given, or relative to the data directory (`xnli/xtreme_dev-en.tsv`)."""
        if self.input_path is None:
            return None
        path = Path(self.input_path).expanduser()
        if not path.is_absolute() and not path.exists() and (self.resolved_data_dir() / path).exists():
            return self.resolved_data_dir() / path
        return path

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


def resolve_data_dir(configured: Path | None = None) -> Path:
    """Config value, then $STT_DATA_DIR, then the shared/data folder beside the repository."""
    candidates = [configured, os.environ.get("STT_DATA_DIR"), Path(__file__).resolve().parents[2] / "shared" / "data"]
    for c in candidates:
        if c:
            path = Path(c).expanduser()
            if path.is_dir():
                return path.resolve()
            if c is not candidates[-1]:
                raise ConfigError(f"data directory {path} does not exist (from config data_dir or $STT_DATA_DIR)")
    raise ConfigError(
        f"no data directory: set STT_DATA_DIR or data_dir (looked for {candidates[-1]})"
    )


def stable_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)


# --- the whole method: translate -> build sets -> fine-tune -> evaluate -> report -----------------------

# self-translate-train-unfiltered: English + every validated translation, including the rows the round-trip
# filter set aside (the "without the filter" column; needs translate.round_trip.enabled).
# english-equal-data: English only, as many distinct rows as the language's self-translate-train set (stt.trainsets).
SetKind = Literal["english", "self-translate-train", "self-translate-train-unfiltered", "code-switch",
                  "human-translate-train", "english-equal-data", "human-translate-train-all", "human-only"]


class BuildConfig(BaseModel):
    """Which training sets to build from the English data and its self-translations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sets: tuple[SetKind, ...] = ("english", "self-translate-train")
    seed: int = 0  # shuffles the mixed set


class TrainConfig(BaseModel):
    """LoRA fine-tuning (peft on transformers Trainer)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    learning_rate: float = Field(2e-4, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # overrides epochs when set
    batch_size: int = Field(4, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    max_length: int = Field(256, ge=16)  # tokens of prompt + answer
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    save_steps: int = Field(50, ge=1)  # checkpoint every N steps (a killed run resumes from the last)
    # Speed: the output layer applied only to answer tokens (the same loss, fewer of the 262k-word logits).
    answer_only_logits: bool = True
    # Speed: batches of similar length (transformers' length-grouped sampler), so little of a step is padding.
    group_by_length: bool = True
    # Memory: the transformer body's activations are recomputed in the backward pass instead of kept
    # (transformers' gradient checkpointing). A demo adapter: peak 4.1 -> 3.0 GB, about 18% more time per
    # step, the same loss to every digit (benchmarks/RESULTS.md). Off by default; the demo turns it on.
    gradient_checkpointing: bool = False
    seed: int = 0  # data order and LoRA initialisation
    # Replicates: every adapter is trained once per seed (data order and LoRA init) and every evaluation runs
    # per seed; scores are means over seeds with two-level intervals (seeds, then items). Empty: `seed` alone.
    # The first seed's adapters keep their plain names and keys, so adding seeds to a run reuses them.
    seeds: tuple[int, ...] = ()

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"train.seeds must be distinct, got {list(value)}")
        return value

    def replicate_seeds(self) -> tuple[int, ...]:
        return self.seeds or (self.seed,)


class EvalConfig(BaseModel):
    """Evaluation on the target-language test sets (and English)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int | None = Field(None, ge=1)  # N test items per language (the same items in every language)
    sample_seed: int | None = None  # None: the first N items; a seed: a seeded random draw of N (a study's sample)
    include_english: bool = True
    # With include_english: every adapter (Self-Translate-Train, controls, each seed) is also scored on the
    # English test: how much each learned the task in the language it saw most (the English reference).
    adapters_on_english: bool = True
    batch_size: int = Field(8, ge=1)
    # Per task, by name: what differs from the task's own settings (its spec): the token cap of a generated
    # answer (the task's default from its kind of answer: numbers 256, spans 32; labels are scored, not
    # generated), and which labelled split it is tested on, where it has more than one (XNLI: test or dev).
    max_new_tokens: dict[str, Annotated[int, Field(ge=1)]] = {}
    test_split: dict[str, str] = {}
    quality_limit: int | None = Field(32, ge=1)  # human-translated items scored for translation quality (chrF)
    # The metric of the gains, intervals, significance and plot, per task, declared before the run (default:
    # MGSM accuracy, XQuAD F1, XNLI calibrated accuracy; choices: each task's TaskSpec.primary_choices,
    # checked with the tasks by stt.jobs.check_run).
    primary_metric: dict[str, str] = {}
    # Uncertainty: 95% bootstrap intervals over test items (paired for gains); recorded with every score.
    bootstrap_resamples: int = Field(10_000, ge=100)
    bootstrap_seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _moved_to_the_task(cls, data: Any) -> Any:
        """Settings that were one per kind of task before they were per task: at their old default (a saved
        config) dropped; set to anything else, one line says what to write instead."""
        if not isinstance(data, dict):
            return data
        kept = dict(data)
        for name, (default, instead) in _MOVED_TO_THE_TASK.items():
            if name in kept and kept.pop(name) != default:
                raise ValueError(f"eval.{name} is now set per task: write {instead.format(data[name])}")
        return kept


# The evaluation settings that moved into each task's spec: their old default and what to write instead.
_MOVED_TO_THE_TASK = {"max_new_tokens_math": (256, "eval.max_new_tokens: {{gsm8k: {}}} (each math task by name)"),
                      "max_new_tokens_qa": (32, "eval.max_new_tokens: {{squad: {}}} (each QA task by name)"),
                      "xnli_split": ("test", "eval.test_split: {{mnli: {}}}")}


class ControlsConfig(BaseModel):
    """Baselines that make the gain mean what it says; each is a column of the table when enabled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # English-only adapter trained for as many optimizer steps as each language's Self-Translate-Train adapter:
    # separates the gain from "more training".
    equal_steps: bool = True
    # English + human translations of the same training items (an upper bound); needs them to exist:
    # NLI trained on XNLI English dev (its human translations), QA on XQuAD (its human translations).
    human_translate_train: bool = False
    # The model translates each test input into English (same few-shot prompt, reversed) and the English
    # adapter answers (Etxaniz et al. 2023). Math and NLI.
    translate_test: bool = False


class ScaleOutConfig(BaseModel):
    """Where a run's model jobs (translate shards, quality, adapters, evaluations) execute.

    in-process: in the flow run (or process) that runs the stage; one machine, the default.
    deployments: as flow runs of `deployment` (stt_app/flows/fanout.py), `group_size` jobs each, spread by Prefect
    over the workers of that deployment's work pool (one worker per GPU); a run that crashes or fails is
    submitted again, up to `max_attempts` times per group. Changes where jobs run, never what they write:
    no stage key holds it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["in-process", "deployments"] = "in-process"
    deployment: str = "run-jobs/gpu"
    group_size: int = Field(4, ge=1)
    max_attempts: int = Field(3, ge=1)
    poll_s: float = Field(5.0, gt=0)


class RunConfig(TranslationSettings):
    """One end-to-end Self-Translate-Train experiment. Saved as the run directory's config.json."""

    name: str = "run"
    # default: runs/<name>. A URL (s3://bucket/prefix, gs://...) puts the run on object storage (stt.store): each
    # worker then works in a local mirror of it and the runner moves every job's inputs and outputs.
    run_dir: Annotated[str | None, BeforeValidator(lambda v: None if v is None else str(v))] = None
    # Prefect runs: the name of an AwsCredentials block holding the run store's credentials, which every worker
    # loads (stt_app.result_storage). None: each worker's own AWS settings. Never the keys themselves.
    store_credentials: str | None = None
    tasks: Names = ("gsm8k",)  # built-in (gsm8k, squad, mnli) or declared in configs/tasks/<name>.yaml
    inputs: dict[str, Path] = {}  # task -> training file (needed for mnli; default: the task's file in data_dir)
    build: BuildConfig = BuildConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    controls: ControlsConfig = ControlsConfig()
    scale_out: ScaleOutConfig = ScaleOutConfig()  # one machine, or the gpu pool's workers

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        # The name becomes runs/<name>: a folder name, never a path out of runs/.
        if not _NAME.fullmatch(value) or value in (".", ".."):
            raise ValueError(f"run name '{value}' must be a folder name: letters, digits, '.', '_', '-'")
        return value

    @property
    def store(self) -> str | None:
        """The run's URL when it lives on object storage, else None."""
        return self.run_dir.rstrip("/") if is_url(self.run_dir) else None

    @property
    def root(self) -> Path:
        """The run folder on this machine (for a run on object storage: this worker's mirror of it)."""
        if is_url(self.run_dir):
            return mirror_root(str(self.run_dir))
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name

    def translate_config(self, task: str) -> TranslateConfig:
        shared = {name: getattr(self, name) for name in TranslationSettings.model_fields}
        return TranslateConfig(task=task, input_path=self.inputs.get(task), out_dir=self.root / task / "translate",
                               **shared)


def with_overrides(data: dict[str, Any], overrides: dict[str, object]) -> dict[str, Any]:
    """`data` (a config as plain data) with dotted overrides set, e.g. {"eval.limit": 8, "engine.model": "x"}.
    None means "not given" and is skipped. The one way settings from the command line reach a config: its
    `--set key=value` and its named options alike."""
    out = copy.deepcopy(data)
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {dotted}: '{key}' is a value, not a group of settings")
            node = child
        node[leaf] = value
    return out


def load_run_config(path: Path, **overrides: object) -> RunConfig:
    """A YAML (or JSON) preset, with dotted overrides such as {"eval.limit": 8}."""
    import yaml

    if not Path(path).is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    return RunConfig.model_validate(with_overrides(data, overrides))
