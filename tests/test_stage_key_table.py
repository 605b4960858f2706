"""Which stage keys change when one config field changes: every field of the run config, no model run.

The plan's jobs are walked in stage order and each job's key is computed with `stt.jobs.key`, the same
function every runner uses to decide "done or redo". No model runs: after a job's key is computed, a
stand-in output is written where the next stage reads it (the translate manifest's shard checksums, a
set's marker, an adapter's weights file), derived from the job's key, as a real output would change when
its key does. So a field that changes a stage's own key shows up in that stage and every stage after it.

The table names every leaf field of RunConfig (a new field fails the test until it has a row) with the
stages whose jobs get new keys. Structural fields (languages, tasks, sets, controls) add or remove jobs;
the table then says which of the jobs present in both plans changed key, and the test which were added.
The model-running check (outputs really rewritten or reused, adapters retrained) is tests/test_stage_keys.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel

from stt import markers
from stt.config import RunConfig
from stt.jobs import STAGES, Job, key, plan_run

from .conftest import DATA

BASE: dict[str, Any] = {
    "name": "keys", "tasks": ["mnli"], "languages": ["de"], "inputs": {"mnli": "xnli/xtreme_dev-en.tsv"},
    "limit": 4, "shard_size": 2, "engine": {"kind": "llama-cpp"},
    "train": {"rank": 2, "alpha": 4, "batch_size": 2},
    "eval": {"limit": 3, "quality_limit": 2},
    "controls": {"equal_steps": True, "translate_test": True},
}

ALL = frozenset(STAGES)  # what changes the translating model's output changes its quality check too
# Translate-test is an evaluation of its own stage: what changes the evaluations changes it too.
EVAL = frozenset({"evaluate", "translate-test"})
AFTER_TRAIN = frozenset({"finetune"}) | EVAL
AFTER_BUILD = frozenset({"build"}) | AFTER_TRAIN
AFTER_TRANSLATE = frozenset({"translate"}) | AFTER_BUILD  # the training data, not quality
NONE: frozenset[str] = frozenset()

# field -> (the changed value, the stages whose jobs (present in both plans) get new keys). `TMP` and
# `OTHER_MODEL` are replaced by a folder made for the test.
TABLE: dict[str, tuple[Any, frozenset[str]]] = {
    # Where things live is not what they are: a moved run or data folder reuses everything.
    "name": ("renamed", NONE),
    "run_dir": ("TMP/moved", NONE),
    "store_credentials": ("aws-credentials/other", NONE),  # how a worker reaches the store, not what it holds
    "data_dir": ("TMP/data-copy", NONE),
    # The translate fingerprint covers every language's shards: a new language is new English-set input too.
    "tasks": (["mnli", "gsm8k"], NONE),
    "languages": (["de", "th"], AFTER_BUILD),
    "inputs": ({"mnli": "TMP/edited/xtreme_dev-en.tsv"}, AFTER_TRANSLATE),
    "limit": (6, AFTER_BUILD),  # shards 0-1 are the same rows; shard 2 is new, so the sets are new
    "shard_size": (4, AFTER_TRANSLATE),
    # engine: what changes the numbers is in the keys; speed settings are not.
    "engine.kind": ("transformers", ALL),
    "engine.model": ("OTHER_MODEL", ALL),
    # llama.cpp's batch shapes change the order of its sums, so its outputs (translations, scores): in every
    # key on llama.cpp (tests/test_stage_keys.py: not on transformers, where the batch is speed only).
    "engine.batch_size": (3, ALL),
    "engine.device": ("cpu", ALL),  # llama.cpp's signature keeps the device as configured
    "engine.dtype": ("float32", ALL),
    "engine.reuse_prefix_cache": (False, NONE),
    "engine.process": ("inline", NONE),  # the same engine code in this process (the default is child)
    # A LoRA adapter on the translating model changes the translations and their quality (evaluations set
    # their own adapter).
    "engine.adapter": ("TMP/adapter", ALL),
    "engine.n_ctx": (4096, NONE),
    "engine.threads": (1, NONE),
    # Each kind's own settings (stt/engine_settings.py): set on an engine of that kind (ON_TOP below).
    "engine.vllm_python": ("/elsewhere/python", NONE),
    "engine.tensor_parallel_size": (2, ALL),
    "engine.gpu_memory_utilization": (0.5, NONE),
    "engine.max_model_len": (2048, ALL),
    "engine.load_format": ("dummy", ALL),
    "engine.max_lora_rank": (8, NONE),
    "engine.base_urls": (["http://127.0.0.1:8/v1"], NONE),
    "engine.served_model": ("other", ALL),
    "engine.concurrency": (2, NONE),
    "engine.timeout_s": (10, NONE),
    "engine.max_retries": (1, NONE),
    # generation: what the model writes when it translates (the translate stage, its quality check and
    # translate-test's inputs).
    "generation.temperature": (0.7, ALL),
    "generation.top_p": (0.9, ALL),
    "generation.seed": (1, ALL),
    "generation.max_new_tokens_ratio": (3.0, ALL),
    "generation.max_new_tokens_extra": (4, ALL),
    "generation.max_new_tokens_cap": (40, ALL),
    "generation.stop": (["\n\n"], ALL),
    "prompt.num_shots": (2, ALL),
    "prompt.style": ("chat", ALL),
    "prompt.demonstrations": ("TMP/demonstrations.jsonl", ALL),
    # The list of kinds is part of every set's key (over-inclusive: adding a kind rebuilds the others, with
    # the same rows, and retrains their adapters).
    "build.sets": (["english", "self-translate-train", "code-switch"], AFTER_BUILD),
    "build.seed": (1, AFTER_BUILD),
    # train: every setting of the Trainer is in the adapter's key, so its evaluations follow.
    "train.rank": (4, AFTER_TRAIN),
    "train.alpha": (8, AFTER_TRAIN),
    "train.dropout": (0.1, AFTER_TRAIN),
    "train.target_modules": (["q_proj", "v_proj"], AFTER_TRAIN),
    "train.learning_rate": (1e-3, AFTER_TRAIN),
    "train.epochs": (2.0, AFTER_TRAIN),
    "train.max_steps": (3, AFTER_TRAIN),
    "train.batch_size": (1, AFTER_TRAIN),
    "train.gradient_accumulation": (2, AFTER_TRAIN),
    "train.max_length": (64, AFTER_TRAIN),
    "train.warmup_ratio": (0.5, AFTER_TRAIN),
    "train.save_steps": (1, AFTER_TRAIN),
    "train.answer_only_logits": (False, AFTER_TRAIN),
    "train.group_by_length": (False, AFTER_TRAIN),
    "train.gradient_checkpointing": (True, AFTER_TRAIN),
    "train.seed": (1, AFTER_TRAIN),
    # Replicates: the first seed keeps its adapters and evaluations (names and keys); the others are added.
    "train.seeds": ([0, 1], NONE),
    # eval: what is scored changes the evaluations; how fast and how intervals are drawn do not.
    "eval.limit": (2, EVAL),
    "eval.sample_seed": (3, EVAL),
    "eval.include_english": (False, NONE),
    "eval.adapters_on_english": (False, NONE),
    # MNLI's labels are scored by transformers, where the batch is speed only; a task that generates on
    # llama.cpp has it in its evaluation key (tests/test_stage_keys.py).
    "eval.batch_size": (1, NONE),
    # Per task: a generated answer's cap (on a generating task, ON_TOP below; test_another_tasks_setting...),
    # the split it is tested on.
    "eval.max_new_tokens": ({"gsm8k": 8}, EVAL),
    "eval.test_split": ({"mnli": "dev"}, EVAL),
    "eval.quality_limit": (3, frozenset({"quality"})),
    "eval.bootstrap_resamples": (200, NONE),
    "eval.bootstrap_seed": (1, NONE),
    "eval.primary_metric": ({"gsm8k": "accuracy"}, NONE),  # the report recomputes scores from predictions
    "controls.equal_steps": (False, NONE),
    "controls.human_translate_train": (True, NONE),
    "controls.translate_test": (False, NONE),
    # The round-trip filter decides which translations are kept: new shard outputs, so new sets.
    "round_trip.enabled": (True, AFTER_TRANSLATE),
    # Thresholds only matter with the filter on (their rows below, with it on).
    "round_trip.min_chrf": (50.0, NONE),
    "round_trip.min_chrf_by_language": ({"de": 10.0}, NONE),
    # Bad rows: the same file has none, so the same rows reach every stage.
    "bad_rows.mode": ("strict", NONE),
    "bad_rows.max_share": (0.5, NONE),
    "bad_rows.max_chars": (100_000, NONE),
    # When a job counts as hung and where jobs run never change what they write.
    "timeouts.floor_s": (10.0, NONE),
    "timeouts.min_tokens_per_s": (1.0, NONE),
    "timeouts.min_items_per_s": (1.0, NONE),
    "timeouts.max_step_s": (1.0, NONE),
    "timeouts.retries": (0, NONE),
    "timeouts.retry_delays_s": ([1.0], NONE),
    "scale_out.mode": ("deployments", NONE),
    "scale_out.deployment": ("run-jobs/other", NONE),
    "scale_out.group_size": (1, NONE),
    "scale_out.max_attempts": (1, NONE),
    "scale_out.poll_s": (1.0, NONE),
}

# Changes made on top of another setting (the base config does not enable what they act on).
VLLM = {"engine.kind": "vllm-batch", "engine.vllm_python": "/nowhere/python"}
OPENAI = {"engine.kind": "openai", "engine.base_urls": ["http://127.0.0.1:9/v1"]}
ON_TOP: dict[str, tuple[dict[str, Any], Any, frozenset[str]]] = {
    "round_trip.min_chrf": ({"round_trip.enabled": True}, 50.0, AFTER_TRANSLATE),
    "round_trip.min_chrf_by_language": ({"round_trip.enabled": True}, {"de": 10.0}, AFTER_TRANSLATE),
    **{f"engine.{name}": (VLLM, *TABLE[f"engine.{name}"]) for name in (
        "vllm_python", "tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "load_format",
        "max_lora_rank")},
    **{f"engine.{name}": (OPENAI, *TABLE[f"engine.{name}"]) for name in (
        "base_urls", "served_model", "concurrency", "timeout_s", "max_retries")},
    "eval.max_new_tokens": ({"tasks": ["mnli", "gsm8k"]}, {"gsm8k": 8}, EVAL),
}

# Jobs a structural change adds (task/stage/name), counted by hand from the plan's rules.
ADDED: dict[str, set[str]] = {
    "languages": {"mnli/translate/th-00000", "mnli/translate/th-00001", "mnli/quality/th",
                  "mnli/build/self-translate-train-th", "mnli/finetune/self-translate-train-th",
                  "mnli/finetune/english-steps-th", "mnli/evaluate/base-th", "mnli/evaluate/zero-shot-th",
                  "mnli/evaluate/zero-shot-equal-steps-th", "mnli/evaluate/self-translate-train-th",
                  "mnli/translate-test/translate-test-th", "mnli/evaluate/self-translate-train-th-on-en",
                  "mnli/evaluate/zero-shot-equal-steps-th-on-en"},
    "build.sets": {"mnli/build/code-switch-de", "mnli/finetune/code-switch-de", "mnli/evaluate/code-switch-de",
                   "mnli/evaluate/code-switch-de-on-en"},
    "controls.human_translate_train": {"mnli/build/human-translate-train-de",
                                       "mnli/finetune/human-translate-train-de",
                                       "mnli/evaluate/human-translate-train-de",
                                       "mnli/evaluate/human-translate-train-de-on-en"},
    "limit": {"mnli/translate/de-00002"},
    "train.seeds": {"mnli/finetune/english.seed1", "mnli/finetune/self-translate-train-de.seed1",
                    "mnli/finetune/english-steps-de.seed1", "mnli/evaluate/zero-shot-en.seed1",
                    "mnli/evaluate/zero-shot-de.seed1", "mnli/evaluate/zero-shot-equal-steps-de.seed1",
                    "mnli/evaluate/self-translate-train-de.seed1", "mnli/translate-test/translate-test-de.seed1",
                    "mnli/evaluate/self-translate-train-de-on-en.seed1",
                    "mnli/evaluate/zero-shot-equal-steps-de-on-en.seed1"},
}
REMOVED: dict[str, set[str]] = {
    "eval.include_english": {"mnli/evaluate/base-en", "mnli/evaluate/zero-shot-en",
                             "mnli/evaluate/self-translate-train-de-on-en",
                             "mnli/evaluate/zero-shot-equal-steps-de-on-en"},
    "eval.adapters_on_english": {"mnli/evaluate/self-translate-train-de-on-en",
                                 "mnli/evaluate/zero-shot-equal-steps-de-on-en"},
    "controls.equal_steps": {"mnli/finetune/english-steps-de", "mnli/evaluate/zero-shot-equal-steps-de",
                             "mnli/evaluate/zero-shot-equal-steps-de-on-en"},
    "controls.translate_test": {"mnli/translate-test/translate-test-de"},
    "shard_size": {"mnli/translate/de-00001"},
    # A step budget shared by every arm makes the equal-steps control the zero-shot adapter itself.
    "train.max_steps": {"mnli/finetune/english-steps-de", "mnli/evaluate/zero-shot-equal-steps-de",
                        "mnli/evaluate/zero-shot-equal-steps-de-on-en"},
}


def leaf_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        if prefix + name == "engine":  # a union of the kinds' settings: every kind's fields
            from stt.engine_settings import KINDS

            out += sorted({f"engine.{n}" for settings in KINDS.values() for n in settings.model_fields})
            continue
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out += leaf_fields(kind, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def _stand_in_translation(config: RunConfig, job: Job, job_key: str) -> None:
    """The translate job's output as the build stage reads it: the manifest entry of a finished shard whose
    file's checksum is its key, and a file with the shard's input rows (ids), as accepted translations."""
    from stt.shards import update_manifest

    out = config.root / job.task / "translate"
    shard = job.inputs["shard"]
    name = f"{job.name}.stand-in.parquet"
    shutil.copyfile(shard["input_path"], out / name)
    update_manifest(out, job.name, {"file": name, "sha256": job_key, "rejects_file": None, "rejects_sha256": None,
                                    "input_sha256": shard["input_sha256"], "language": shard["language"],
                                    "input_file": str(Path(shard["input_path"]).relative_to(out))})


def stage_keys(config: RunConfig) -> dict[str, str]:
    """Every job's key, walking the plan in stage order with stand-in outputs for the next stage."""
    keys: dict[str, str] = {}
    for stage, planned in plan_run(config).items():  # planned once; each key computed when its stage comes
        for job in planned:
            keys[job.id] = job_key = key(job)
            if stage == "translate":
                _stand_in_translation(config, job, job_key)
            elif stage == "build":
                folder = config.root / job.task / "sets" / job.name
                folder.mkdir(parents=True, exist_ok=True)
                markers.mark_done(folder, job_key, [], rows=4 + (len(job.name) % 3))
            elif stage == "finetune":
                folder = config.root / job.task / "adapters" / job.name
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "adapter_model.safetensors").write_text(job_key)  # its checksum follows the key
                markers.mark_done(folder, job_key, ["adapter_model.safetensors"], metrics={"steps": 3})
    return keys


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """Files the changed values point at: an edited English file, a data folder copy, demonstrations,
    another model's folder."""
    tmp = tmp_path_factory.mktemp("key-table-files")
    lines = (DATA / "xnli" / "xtreme_dev-en.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[0], lines[1] = lines[1], lines[0]  # the first shard's two rows swapped: the same rows, another order
    (tmp / "edited").mkdir()
    (tmp / "edited" / "xtreme_dev-en.tsv").write_text("".join(lines), encoding="utf-8")
    (tmp / "data-copy").mkdir()
    for child in DATA.iterdir():
        (tmp / "data-copy" / child.name).symlink_to(child)
    # The same exemplar pairs, numbered the other way round: the prompt shows them in the reverse order.
    rows = [json.loads(line) for line in (DATA / "mgsm" / "mgsm_exemplars.jsonl").read_text(encoding="utf-8")
            .splitlines() if line.strip()]
    last = max(r["index"] for r in rows)
    (tmp / "demonstrations.jsonl").write_text("".join(
        json.dumps({**r, "index": last + 1 - r["index"]}, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (tmp / "adapter").mkdir()
    (tmp / "adapter" / "adapter_model.safetensors").write_bytes(b"adapter weights")
    model = tmp / "other-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"other weights")
    return tmp


def _config(folder: Path, made: Path, overrides: dict[str, Any]) -> RunConfig:
    data = json.loads(json.dumps(BASE))
    data["run_dir"] = str(folder)
    for dotted, value in overrides.items():
        if isinstance(value, str):
            value = value.replace("TMP", str(made)).replace("OTHER_MODEL", str(made / "other-model"))
        elif isinstance(value, dict):
            value = {k: v.replace("TMP", str(made)) if isinstance(v, str) else v for k, v in value.items()}
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return RunConfig.model_validate(data)


@pytest.fixture(scope="module")
def base_keys(tmp_path_factory, made) -> dict[str, str]:
    return stage_keys(_config(tmp_path_factory.mktemp("base") / "run", made, {}))


def test_every_field_of_the_run_config_has_a_row():
    assert sorted(set(leaf_fields(RunConfig)) - set(TABLE)) == []
    assert sorted(set(TABLE) - set(leaf_fields(RunConfig))) == []


def test_the_base_plan_has_the_jobs_counted_by_hand(base_keys):
    # 2 shards; quality de; english + stt-de sets; english, stt-de, equal-steps adapters;
    # base and zero-shot in en and de, equal steps, stt and translate-test in de; equal steps and stt in en
    # (the English reference of the German adapters).
    assert sorted(base_keys) == sorted([
        "mnli/translate/de-00000", "mnli/translate/de-00001", "mnli/quality/de", "mnli/build/english",
        "mnli/build/self-translate-train-de", "mnli/finetune/english", "mnli/finetune/self-translate-train-de",
        "mnli/finetune/english-steps-de", "mnli/evaluate/base-en", "mnli/evaluate/base-de",
        "mnli/evaluate/zero-shot-en", "mnli/evaluate/zero-shot-de", "mnli/evaluate/zero-shot-equal-steps-de",
        "mnli/evaluate/self-translate-train-de", "mnli/translate-test/translate-test-de",
        "mnli/evaluate/zero-shot-equal-steps-de-on-en", "mnli/evaluate/self-translate-train-de-on-en"])
    assert len(set(base_keys.values())) == len(base_keys)  # no two jobs share a key


@pytest.mark.parametrize("field", sorted(TABLE))
def test_one_field_changes_exactly_the_stages_that_depend_on_it(field, base_keys, made, tmp_path):
    before_overrides, (value, expected) = {}, TABLE[field]
    before = base_keys
    if field in ON_TOP:
        before_overrides, value, expected = ON_TOP[field]
        before = stage_keys(_config(tmp_path / "before", made, before_overrides))
    after = stage_keys(_config(tmp_path / "after", made, {**before_overrides, field: value}))
    common = set(before) & set(after)
    changed = {job.split("/")[1] for job in common if before[job] != after[job]}
    assert changed == set(expected), sorted(job for job in common if before[job] != after[job])
    if field not in ON_TOP:
        assert set(after) - set(before) == (ADDED.get(field) or (
            {j for j in after if j.startswith("gsm8k/")} if field == "tasks" else set()))
        assert set(before) - set(after) == REMOVED.get(field, set())
    if field in ("name", "run_dir", "data_dir", "store_credentials"):
        assert after == before


def test_a_tasks_own_evaluation_setting_changes_its_evaluations_alone(made, tmp_path):
    """eval.max_new_tokens and eval.test_split are per task: changing gsm8k's answer cap reruns gsm8k's
    evaluations (with translate-test, which answers through them) and no job of mnli's (before issue 36 every
    evaluation key held every kind's cap and split)."""
    both = {"tasks": ["mnli", "gsm8k"]}
    before = stage_keys(_config(tmp_path / "before", made, both))
    after = stage_keys(_config(tmp_path / "after", made, {**both, "eval.max_new_tokens": {"gsm8k": 8}}))
    assert before.keys() == after.keys()
    changed = sorted(job for job in before if before[job] != after[job])
    assert changed == ["gsm8k/evaluate/base-de", "gsm8k/evaluate/base-en", "gsm8k/evaluate/self-translate-train-de",
                       "gsm8k/evaluate/self-translate-train-de-on-en", "gsm8k/evaluate/zero-shot-de",
                       "gsm8k/evaluate/zero-shot-en", "gsm8k/evaluate/zero-shot-equal-steps-de",
                       "gsm8k/evaluate/zero-shot-equal-steps-de-on-en", "gsm8k/translate-test/translate-test-de"]


def test_a_changed_upstream_output_reaches_every_later_key(base_keys, made, tmp_path):
    """The propagation itself, on real stage functions: a set's new key is a new adapter key, and an
    adapter's new weights are a new evaluation key, with nothing else changed."""
    config = _config(tmp_path / "run", made, {})
    assert stage_keys(config) == base_keys
    set_marker = config.root / "mnli" / "sets" / "english" / markers.MARKER
    info = json.loads(set_marker.read_text())
    set_marker.write_text(json.dumps({**info, "key": "another set"}))
    planned = {job.id: job for jobs in plan_run(config).values() for job in jobs}
    assert key(planned["mnli/finetune/english"]) != base_keys["mnli/finetune/english"]
    (config.root / "mnli" / "adapters" / "english" / "adapter_model.safetensors").write_text("retrained")
    for job_id in ("mnli/evaluate/zero-shot-en", "mnli/evaluate/zero-shot-de", "mnli/translate-test/translate-test-de"):
        assert key(planned[job_id]) != base_keys[job_id]
    assert key(planned["mnli/evaluate/self-translate-train-de"]) == base_keys["mnli/evaluate/self-translate-train-de"]


def test_stand_in_shards_hold_the_planned_rows(base_keys, made, tmp_path):
    """The stand-ins are the real planned input shards, so the human translate-train key reads real ids."""
    config = _config(tmp_path / "run", made, {})
    stage_keys(config)
    ids = pq.read_table(config.root / "mnli" / "translate" / "de-00000.stand-in.parquet").column("id").to_pylist()
    assert ids == ["xnli-dev:train:0", "xnli-dev:train:1"]
