"""Fine-tune: one LoRA adapter per training set and seed.

LoRA fine-tuning with peft on the transformers Trainer, loss on the answer tokens only.

The output folder holds the adapter (`peft.PeftModel.from_pretrained(base, folder)` loads it), the
training config, the loss curve (`loss.csv`, `metrics.json`) and `_manifest.json`. Checkpoints go
to `checkpoints/`; a run killed mid-way resumes from the last one.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from stt import faults, markers, timeouts
from stt.config import RunConfig, TimeoutConfig, TrainConfig
from stt.errors import DataError
from stt.files import write_text_atomic
from stt.models import ResolvedModel, hf_folder, resolve_model
from stt.stages.base import Job, StageDef
from stt.store import Unit
from stt.templates import TEMPLATE_VERSION

if TYPE_CHECKING:
    from stt.pipeline import TaskPlan

log = logging.getLogger(__name__)

ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors"]
OUTPUTS = [*ADAPTER_FILES, "loss.csv", "metrics.json", "train_config.json", "set_aside.parquet", "checkpoints"]
# Bumped when the training code changes what an adapter holds for the same config and set, so adapters
# made by the older code are retrained, not reused. v2: LoRA's initialisation is seeded (train.seed).
# v3: the answer-only loss and its gradient are computed in chunks (the same sums in another order).
TRAIN_VERSION = "finetune-v3"
# A truncated pair keeps at least this much prompt; a target that leaves less is set aside.
MIN_PROMPT_TOKENS = 8


def tokenize_pairs(tokenizer: Any, rows: list[dict[str, Any]], max_length: int
                   ) -> tuple[list[dict[str, list[int]]], list[dict[str, Any]], int]:
    """prompt + target + EOS, labels -100 on the prompt (the loss is on the answer only).

    A pair longer than `max_length` keeps its whole target and loses the beginning of its prompt
    (a QA context's first sentences). A row that would lose its answer is set aside with a reason,
    never trained on: `target_too_long` (the target itself does not fit) or `answer_cut_from_context`
    (QA: the answer span was in the part of the context that was cut). Returns (features, set aside,
    number of prompts shortened).
    """
    features, set_aside, shortened = [], [], 0
    for r in rows:
        prompt = tokenizer(r["prompt"], add_special_tokens=True)["input_ids"]
        target = tokenizer(r["target"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        room = max_length - len(target)
        if room < MIN_PROMPT_TOKENS:
            set_aside.append({**r, "reason": "target_too_long", "tokens": len(prompt) + len(target)})
            continue
        if len(prompt) > room:
            prompt = prompt[-room:]
            answer = json.loads(r.get("fields") or "{}").get("answer_text")
            if answer and answer.strip() not in tokenizer.decode(prompt, skip_special_tokens=True):
                set_aside.append({**r, "reason": "answer_cut_from_context", "tokens": room + len(target)})
                continue
            shortened += 1
        features.append({"input_ids": prompt + target, "labels": [-100] * len(prompt) + target})
    return features, set_aside, shortened


def pad_collator(tokenizer: Any) -> Any:
    """Pads a batch on the right (positions count from each row's first token, as in generation); padding is
    masked out of attention and out of the loss (label -100). Sets the tokenizer's padding side."""
    from transformers import DataCollatorForSeq2Seq

    tokenizer.padding_side = "right"
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")


# Answer tokens whose 262k-word logits exist at once in the loss (134 MB in fp32): the memory of a training
# step no longer grows with the number of answer tokens in a batch. A demo adapter's peak resident memory:
# 4.93 GB with autograd over the whole batch; 4.29 / 4.11 / 3.93 GB with chunks of 256 / 128 / 64 tokens
# (smaller chunks cost more matmul calls for little memory).
LOSS_CHUNK_TOKENS = 128


def answer_only_loss(model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
    """Causal-LM loss with the output layer applied only where there is a loss (the answer tokens).

    The same loss as the model's own (cross-entropy of each answer token given everything before it),
    but Gemma 3's 262k-word output layer is the heaviest part of the network: computing its logits for
    prompt tokens that carry no loss is wasted time. Returns (summed loss, number of answer tokens).
    """
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    target = inputs["labels"][:, 1:]
    keep = target != -100
    cap = getattr(causal.config, "final_logit_softcapping", None)
    return output_layer_loss(hidden[:, :-1][keep], causal.lm_head, target[keep], cap), keep.sum()


def output_layer_loss(hidden: Any, head: Any, targets: Any, cap: float | None = None,
                      chunk: int = LOSS_CHUNK_TOKENS) -> Any:
    """Summed cross-entropy of `targets` under `head(hidden)` (softcapped as the model does), computed
    `chunk` rows at a time.

    Autograd would keep every answer token's logits, their softmax and their gradients alive at once:
    4 x 262k floats per token, gigabytes for a batch of long answers. With a frozen output layer (LoRA
    leaves it alone) the gradient needs only d loss / d hidden, which each chunk works out as soon as its
    logits exist (softmax minus the one-hot target, through the softcap, times the weights); only that
    (tokens x 640 floats) is kept for the backward pass. A trainable or biased head takes autograd's path.
    """
    import torch
    import torch.nn.functional as F

    if head.weight.requires_grad or getattr(head, "bias", None) is not None:
        logits = head(hidden).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return F.cross_entropy(logits, targets, reduction="sum")
    return _chunked_output_loss_class().apply(hidden, head.weight, targets, cap, chunk)


@functools.cache  # built on first use: torch is imported only when a model trains
def _chunked_output_loss_class() -> type:
    import torch

    class ChunkedOutputLoss(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, targets, cap, chunk):  # noqa: ANN001, ANN205 - autograd's signature
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad = torch.empty_like(hidden)
            for i in range(0, len(hidden), chunk):
                t = targets[i:i + chunk]
                logits = (hidden[i:i + chunk] @ weight.T).float()
                if cap:
                    logits = torch.tanh(logits / cap) * cap
                logp = torch.log_softmax(logits, dim=-1)
                rows = torch.arange(len(t), device=t.device)
                total -= logp[rows, t].sum()
                d = logp.exp_()  # d loss / d logits = softmax - one-hot
                d[rows, t] -= 1
                if cap:
                    d *= 1 - (logits / cap) ** 2  # through tanh(x / cap) * cap
                grad[i:i + chunk] = d.to(weight.dtype) @ weight
            ctx.save_for_backward(grad)
            return total

        @staticmethod
        def backward(ctx, grad_total):  # noqa: ANN001, ANN205
            (grad,) = ctx.saved_tensors
            return grad * grad_total.to(grad.dtype), None, None, None, None

    return ChunkedOutputLoss


def answer_only_trainer(trainer_cls: type) -> type:
    class AnswerOnlyTrainer(trainer_cls):  # type: ignore[misc, valid-type]
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            total, count = answer_only_loss(model, inputs)
            # Normalised as the Trainer expects: by the tokens of all accumulated batches when it counts
            # them for models that take loss kwargs (it then does not divide by the accumulation steps).
            if num_items_in_batch is not None and getattr(self, "model_accepts_loss_kwargs", False):
                loss = total / num_items_in_batch
            else:
                loss = total / count.clamp(min=1)
            return (loss, None) if return_outputs else loss

    return AnswerOnlyTrainer


def killable_trainer(trainer_cls: type, name: str) -> type:
    """The kill trials' `finetune:<name>:checkpoint:<step>` point: inside a checkpoint's write, after the
    adapter and before the optimizer and trainer state (which the Trainer writes last)."""

    class KillableTrainer(trainer_cls):  # type: ignore[misc, valid-type]
        def save_model(self, output_dir=None, _internal_call=False):  # noqa: ANN001, ANN201 - Trainer's signature
            super().save_model(output_dir, _internal_call)
            if _internal_call:
                faults.crash_point(f"finetune:{name}:checkpoint:{self.state.global_step}")

    return KillableTrainer


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Checkpoints a resume can trust, oldest first; half-written ones (killed mid-save: no readable
    trainer_state.json, which the Trainer writes last) are removed so nothing ever resumes from them."""
    import shutil

    good = []
    for path in sorted(checkpoint_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        try:
            json.loads((path / "trainer_state.json").read_text())
            good.append(path)
        except (OSError, ValueError):
            log.warning("%s: half-written checkpoint (killed while saving): removed", path)
            shutil.rmtree(path, ignore_errors=True)
    return good


def loss_curve(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The per-step losses from the Trainer's state, which a resume restores from the checkpoint, so a
    resumed adapter's curve and mean loss cover every step, not only those after the resume."""
    return [{"step": h["step"], "epoch": round(h.get("epoch") or 0, 4), "loss": float(h["loss"]),
             "learning_rate": float(h.get("learning_rate", 0))} for h in log_history if "loss" in h]


def _sampler_argument(arguments_cls: type, group_by_length: bool) -> dict[str, Any]:
    """transformers 5 names the sampler `train_sampling_strategy`; 4.x has a `group_by_length` flag."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(arguments_cls)}
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length" if group_by_length else "random"}
    return {"group_by_length": group_by_length}


def _checkpointing_argument(arguments_cls: type, on: bool) -> dict[str, Any]:
    """transformers 5 renames `gradient_checkpointing` to `activation_checkpointing` (the old name warns);
    nothing is passed when it is off, so the default is the library's own."""
    import dataclasses

    if not on:
        return {}
    names = {f.name for f in dataclasses.fields(arguments_cls)}
    # The reentrant variant needs inputs that require grads; the non-reentrant one does not.
    if "activation_checkpointing" in names:
        return {"activation_checkpointing": True, "activation_checkpointing_kwargs": {"use_reentrant": False}}
    return {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}


def planned_steps(examples: int, config: TrainConfig) -> int:
    """Optimizer steps the Trainer takes for this many examples (max_steps wins over epochs)."""
    if config.max_steps:
        return config.max_steps
    per_epoch = max(1, math.ceil(math.ceil(examples / config.batch_size) / config.gradient_accumulation))
    return max(1, math.ceil(per_epoch * config.epochs))


def train_key(model: ResolvedModel, set_key: str, config: TrainConfig) -> str:
    return markers.stage_key(stage="finetune", version=TRAIN_VERSION, weights=model.weights_sha256, set=set_key,
                            template=TEMPLATE_VERSION, config=config.model_dump(mode="json", exclude={"seeds"}))


def _set_info(set_folder: Path) -> dict[str, Any]:
    marker = Path(set_folder) / markers.MARKER
    info = json.loads(marker.read_text()) if marker.exists() else {}
    if not info.get("key"):
        raise DataError(f"{set_folder}: not a finished training set (no {markers.MARKER}); build it first")
    return info


def finetune_key(model_name: str, set_folder: Path, config: TrainConfig) -> str:
    """What the adapter depends on: base weights, the training set's content key, the training config."""
    return train_key(resolve_model(model_name), _set_info(set_folder)["key"], config)


def _copy_twin(twins: Sequence[Path], out_folder: Path, key: str) -> tuple[list[str], dict[str, Any]] | None:
    """An adapter another folder already holds under the same key, copied here: the same base weights, set
    and config train the same bits (the demo's equal-steps controls of two languages often take the same
    number of steps on the same English set). Its marker's record is kept, naming where it came from."""
    for twin in twins:
        info = markers.read_done(Path(twin), key)
        if not info or Path(twin).resolve() == out_folder.resolve():
            continue
        out_folder.mkdir(parents=True, exist_ok=True)
        for name in info["files"]:
            shutil.copyfile(Path(twin) / name, out_folder / name)
        # A twin that was itself a copy names its own source: this copy names the folder it came from.
        kept = {k: v for k, v in info.items() if k not in ("key", "finished", "files", "copied_from", "stage")}
        log.info("adapter %s: the same key as %s, copied instead of trained", out_folder, twin)
        return list(info["files"]), {**kept, "copied_from": str(twin)}
    return None


def checkpoints_of(key: str) -> str:
    """The subfolder of `checkpoints/` that holds this key's checkpoints: a resume only ever continues a run of
    the same key, and a redo under a new key clears the others' (stt.markers.made_once's `keep`)."""
    return key[:16]


def make_adapter(model_name: str, set_folder: Path, out_folder: Path, config: TrainConfig, device: str, key: str,
                 twins: Sequence[Path] = (), supervised: bool = False) -> tuple[list[str], dict[str, Any]]:
    """The adapter of `key` in `out_folder` (stale outputs already cleared by the runner): copied from a twin
    done under the same key, else trained. Returns its files and what the marker records beside them.
    `supervised`: the training runs in the engine process (stt.engines.child.run_supervised), under the
    caller's deadline, so a training step stuck in native code is ended there; a copy does not start it."""
    set_folder, out_folder = Path(set_folder), Path(out_folder)
    copied = _copy_twin(twins, out_folder, key)
    if copied:
        return copied
    if supervised:
        from stt.engines.child import run_supervised

        return tuple(run_supervised("stt.stages.finetune:make_adapter",  # type: ignore[return-value]
                                    {"model_name": model_name, "set_folder": set_folder, "out_folder": out_folder,
                                     "config": config, "device": device, "key": key},
                                    f"fine-tuning {out_folder.name}", unit=f"finetune:{out_folder.name}"))
    return _train(resolve_model(model_name), set_folder, _set_info(set_folder), out_folder, config, device, key)


def finetune(model_name: str, set_folder: Path, out_folder: Path, config: TrainConfig = TrainConfig(),  # noqa: B008
             device: str = "auto", twins: Sequence[Path] = (), supervised: bool = False) -> dict[str, Any]:
    """Train (or reuse) a LoRA adapter on one training set, outside a run (benchmarks, tests): the stage's job
    done the way the runner does it (stt.markers.made_once). Returns the adapter's manifest. `twins`: other
    adapter folders; one done under the same key is copied instead of training again."""
    key = finetune_key(model_name, set_folder, config)
    return markers.made_once(Path(out_folder), key, OUTPUTS, "finetune", lambda: make_adapter(
        model_name, set_folder, out_folder, config, device, key, twins, supervised), keep=checkpoints_of(key))


def _train(model: ResolvedModel, set_folder: Path, set_info: dict[str, Any], out_folder: Path, config: TrainConfig,
           device: str, key: str) -> tuple[list[str], dict[str, Any]]:
    """Train the adapter of this key (resuming its last complete checkpoint) and write its outputs; returns
    their names and the marker's record."""
    checkpoint_dir = out_folder / "checkpoints" / checkpoints_of(key)
    out_folder.mkdir(parents=True, exist_ok=True)
    rows = pq.read_table(set_folder / "data.parquet").to_pylist()
    if not rows:
        raise DataError(f"{set_folder}/data.parquet: no training rows")
    tokenizer, peft_model, cuda = _peft_model(model, config, device)
    features, set_aside, shortened = tokenize_pairs(tokenizer, rows, config.max_length)
    if set_aside:
        pq.write_table(pa.Table.from_pylist(set_aside), out_folder / "set_aside.parquet")
        log.warning("%s: %d of %d rows set aside (%s)", set_folder.name, len(set_aside), len(rows),
                    dict(Counter(r["reason"] for r in set_aside)))
    if not features:
        raise DataError(f"{set_folder}: every row is longer than train.max_length={config.max_length} "
                        "and would lose its answer; raise max_length")
    total_steps = planned_steps(len(features), config)
    run = _run_trainer(peft_model, tokenizer, features, config, checkpoint_dir, total_steps, cuda, out_folder.name)
    peft_model.save_pretrained(out_folder)

    curve = loss_curve(run["log_history"])
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=["step", "epoch", "loss", "learning_rate"])
    writer.writeheader()
    writer.writerows(curve)
    write_text_atomic(out_folder / "loss.csv", table.getvalue())
    # The Trainer's own training_loss after a resume averages only the resumed steps' losses over all
    # steps; the mean of the logged per-step losses is right either way (logging_steps=1).
    train_loss = sum(c["loss"] for c in curve) / len(curve) if curve else None
    trainable, total = peft_model.get_nb_trainable_parameters()
    step_times = run["step_times"]
    metrics = {
        "steps": run["global_step"], "train_loss": train_loss, "seconds": round(run["seconds"], 2),
        "seconds_per_step": round(sum(step_times) / len(step_times), 3) if step_times else None,
        "planned_steps": total_steps, "warmup_steps": math.ceil(config.warmup_ratio * total_steps),
        "examples": len(features), "rows": len(rows), "set_aside": dict(Counter(r["reason"] for r in set_aside)),
        "prompts_shortened": shortened, "tokens_per_epoch": sum(len(f["input_ids"]) for f in features),
        "target_tokens_per_epoch": sum(sum(t != -100 for t in f["labels"]) for f in features),
        "trainable_params": trainable, "total_params": total,
        "device": "cuda" if cuda else "cpu", "dtype": "bfloat16" if cuda else "float32",
        "resumed_from": run["resume"], "loss_curve": curve,
    }
    write_text_atomic(out_folder / "metrics.json", json.dumps(metrics, indent=2))
    write_text_atomic(out_folder / "train_config.json", config.model_dump_json(indent=2))
    files = [*ADAPTER_FILES, "loss.csv", "metrics.json", "train_config.json"]
    files += ["set_aside.parquet"] if set_aside else []
    log.info("adapter %s: %d steps, loss %.4f, %.1fs", out_folder, run["global_step"], train_loss, run["seconds"])
    return files, {"model_id": model.model_id, "weights_sha256": model.weights_sha256,
                   "set_folder": str(set_folder), "set_key": set_info["key"], "set": set_info.get("set"),
                   "template_version": TEMPLATE_VERSION, "config": config.model_dump(mode="json"),
                   "metrics": {k: v for k, v in metrics.items() if k != "loss_curve"}}


def _peft_model(model: ResolvedModel, config: TrainConfig, device: str) -> tuple[Any, Any, bool]:
    """The tokenizer, the base model with fresh LoRA weights (seeded), and whether it is on a GPU."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed
    from transformers.utils.logging import disable_progress_bar

    from stt.engines.tokenizer import own_tokenizer

    # transformers 5 warns about its own deprecated attribute when peft wraps the model: not actionable here.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    folder = hf_folder(model)
    tokenizer = own_tokenizer(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # bf16 on a GPU; fp32 on the CPU (bf16 matmuls are slow there and the model is small).
    disable_progress_bar()  # a bar for loading 236 local tensors in a fraction of a second: noise in the log
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16 if cuda else torch.float32)
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM")
    # LoRA's A matrices start random: seeded here, or two runs of one key would start (and end) apart.
    # (The Trainer seeds only later, when it is created.)
    set_seed(config.seed)
    return tokenizer, get_peft_model(base, lora), cuda


def _training_arguments(arguments_cls: type, config: TrainConfig, checkpoint_dir: Path, total_steps: int,
                        cuda: bool) -> Any:
    return arguments_cls(
        **_sampler_argument(arguments_cls, config.group_by_length),
        **_checkpointing_argument(arguments_cls, config.gradient_checkpointing),
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        # Steps, computed here: transformers 4.x reads a float warmup_steps as steps, 5.x as a ratio.
        warmup_steps=math.ceil(config.warmup_ratio * total_steps),
        logging_steps=1,
        save_steps=config.save_steps,
        save_total_limit=1,
        seed=config.seed,
        bf16=cuda,
        use_cpu=not cuda,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def _run_trainer(peft_model: Any, tokenizer: Any, features: list[dict[str, Any]], config: TrainConfig,
                 checkpoint_dir: Path, total_steps: int, cuda: bool, name: str) -> dict[str, Any]:
    """Train with the Trainer from the last complete checkpoint, if any: steps, log history, time, step times."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    args = _training_arguments(TrainingArguments, config, checkpoint_dir, total_steps, cuda)
    step_times: list[float] = []

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001 - Trainer's signature
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            step_times.append(time.perf_counter() - self.t0)
            faults.crash_point(f"finetune:{name}:step:{state.global_step}")

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            if logs and "loss" in logs:
                log.info("step %d/%d loss %.4f", state.global_step, state.max_steps, logs["loss"])

    trainer_class = killable_trainer(answer_only_trainer(Trainer) if config.answer_only_logits else Trainer, name)
    collator = pad_collator(tokenizer)
    # Passed as a plain function: a collator with a `tokenizer` makes the Trainer write the whole tokenizer
    # (33 MB, about 1 s) into every checkpoint; a resume reads the base model's own.
    trainer = trainer_class(model=peft_model, args=args, train_dataset=features,
                            data_collator=lambda batch: collator(batch), callbacks=[Record()])
    # Without tqdm the Trainer prints every log dict; Record above logs each step as one line instead.
    trainer.remove_callback(PrinterCallback)
    checkpoints = complete_checkpoints(checkpoint_dir)
    resume = str(checkpoints[-1]) if checkpoints else None
    if resume:
        log.info("resuming from %s", resume)
    t0 = time.perf_counter()
    saved = json.loads((Path(resume) / "trainer_state.json").read_text()) if resume else {}
    if saved.get("global_step", 0) >= total_steps:
        # Killed after the last checkpoint: training is complete there. (Resuming the Trainer from a
        # checkpoint at max_steps would take one step more than planned.)
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(peft_model, load_file(Path(resume) / "adapter_model.safetensors"))
        global_step, log_history = saved["global_step"], saved["log_history"]
    else:
        trainer.train(resume_from_checkpoint=resume)
        global_step, log_history = trainer.state.global_step, trainer.state.log_history
    return {"global_step": global_step, "log_history": log_history, "seconds": time.perf_counter() - t0,
            "step_times": step_times, "resume": resume}


class Inputs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    set_folder: Path
    train: TrainConfig  # the run's, with this replicate's seed
    # Train for as many optimizer steps as the adapter in this folder took (the equal-steps control).
    steps_like: Path | None = None
    device: str
    twins: tuple[Path, ...] = ()  # the task's other adapters: one done under the same key is copied
    supervised: bool  # engine.process child: the training runs in the engine process, ended at the deadline


def train_config(i: Inputs) -> TrainConfig:
    """The adapter's training config: the equal-steps control's max_steps read from its twin's marker."""
    if i.steps_like is None:
        return i.train
    marker = i.steps_like / markers.MARKER
    if not marker.is_file():
        raise DataError(f"{i.steps_like.name} must be trained first: this adapter trains for as many steps")
    return i.train.model_copy(update={"max_steps": json.loads(marker.read_text())["metrics"]["steps"]})


class Finetune(StageDef[Inputs]):
    name = "finetune"
    Inputs = Inputs
    flow = "finetune"

    def plan_jobs(self, config: RunConfig, plan: TaskPlan) -> list[Job]:
        out = []
        for a in plan.adapters:
            inputs = Inputs(model=config.engine.model, set_folder=plan.set_dir(a.set_name),
                            train=config.train.model_copy(update={"seed": a.seed, "seeds": ()}),
                            steps_like=plan.adapter_dir(a.steps_like) if a.steps_like else None,
                            device=config.engine.device, supervised=config.engine.process == "child",
                            twins=tuple(plan.adapter_dir(b.name) for b in plan.adapters if b.name != a.name))
            # An adapter trained for as many steps as another one waits for it (wave 1).
            out.append(self.job(plan.task, a.name, plan.adapter_dir(a.name), inputs, config.timeouts,
                                wave=1 if a.steps_like else 0))
        return out

    outputs = tuple(OUTPUTS)

    def key(self, i: Inputs) -> str:
        return finetune_key(i.model, i.set_folder, train_config(i))

    def kept(self, key: str) -> str | None:
        return checkpoints_of(key)  # a rerun resumes from this key's checkpoints

    def progress(self, i: Inputs, folder: Path, key: str) -> list[Unit]:
        units = []
        for checkpoint in sorted((folder / "checkpoints" / checkpoints_of(key)).glob("checkpoint-*")):
            if not (checkpoint / "trainer_state.json").is_file():  # the Trainer writes it last
                continue
            names = tuple(p.relative_to(folder).as_posix() for p in sorted(checkpoint.rglob("*")) if p.is_file())
            units.append(Unit(f"progress-{checkpoint.name}", names))
        return units

    def make(self, i: Inputs, folder: Path, key: str) -> tuple[list[str], dict[str, Any]]:
        return make_adapter(i.model, i.set_folder, folder, train_config(i), i.device, key, i.twins, i.supervised)

    def run(self, i: Inputs, folder: Path) -> dict[str, Any]:
        from stt.engines import give_memory_back
        try:
            return super().run(i, folder)
        finally:
            give_memory_back()  # the model, its activations and the optimizer: 2 GB a later job never reuses

    def brief(self, info: dict[str, Any]) -> str:
        m = info.get("metrics", {})
        loss = m.get("train_loss")
        copied = f" (copied from {Path(info['copied_from']).name}: the same key)" if info.get("copied_from") else ""
        return f"{m.get('steps')} steps, train loss " + (f"{loss:.4g}" if isinstance(loss, float) else str(loss)) \
            + copied

    def timeout_s(self, i: Inputs, timeouts_: TimeoutConfig) -> float | None:
        marker = i.set_folder / markers.MARKER  # the set's rows give the adapter's steps
        rows = json.loads(marker.read_text()).get("rows", 0) if marker.is_file() else 0
        try:
            train = train_config(i)
        except DataError:
            train = i.train
        return timeouts.training_s(planned_steps(max(rows, 1), train), timeouts_)


STAGE = Finetune()
