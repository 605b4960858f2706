"""`stt` command line. Bad arguments give one clear line and exit code 2, never a traceback.

The library itself does not import Prefect; the commands that run flows import them when called.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError

from stt.engine_settings import KINDS as ENGINE_KINDS
from stt.errors import SttError, disk_full, is_disk_full

if TYPE_CHECKING:
    from stt.config import EvalConfig
    from stt.engine_settings import EngineConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Self-Translate-Train: a model translates its own English training data.")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _show_progress() -> None:
    """Without Prefect: the library's log lines (each job as it ends: stage, k of n, time, elapsed) on stderr."""
    logger = logging.getLogger("stt")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


@contextmanager
def _reported(failed: str | None = None) -> Iterator[None]:
    """Bad input -> one `error:` line, exit 2. With `failed`, any other error -> one line, exit 1."""
    try:
        yield
    except typer.Exit:
        raise
    except ValidationError as exc:
        err = exc.errors()[0]
        ours = err.get("ctx", {}).get("error") if err["type"] == "value_error" else None
        if ours is not None:  # our own validators' messages name the setting and the fix
            _fail(str(ours))
        # Without the union's tag (engine.llama-cpp.n_ctx is the config's engine.n_ctx).
        where = ".".join(str(p) for p in err["loc"] if p not in ENGINE_KINDS)
        _fail(f"invalid {where}: {err['msg']}")
    except SttError as exc:
        _fail(str(exc))
    except Exception as exc:
        if is_disk_full(exc):  # from a write outside our own helpers (an adapter, a checkpoint)
            where = getattr(exc, "filename", None)
            _fail(str(disk_full(Path(where).parent if where else Path.cwd(), Path(where).name if where else "a file")))
        if failed is None:
            raise
        # The flow's logs above hold the traceback.
        typer.echo(f"error: {failed} failed: {exc}", err=True)
        raise typer.Exit(1) from None


SET_HELP = "Any setting of the config, dotted: --set engine.threads=2 (repeatable; YAML values)."


@app.command("translate")
def translate_cmd(
    task: Annotated[str | None, typer.Option(help="Task: gsm8k (math), squad (QA), mnli (NLI; needs --input), "
                                                  "or one declared in configs/tasks/ [default: gsm8k].")] = None,
    languages: Annotated[str | None, typer.Option(help="Comma-separated target languages [default: de,th].")]
    = None,
    limit: Annotated[int | None, typer.Option(help="Translate only the first N training examples.")] = None,
    model: Annotated[str | None, typer.Option(help="Short name (gemma3-270m, smollm2-135m), .gguf file or HF "
                                                   "folder [default: gemma3-270m].")] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory; rerunning into it resumes "
                                                  "[default: runs/translate].")] = None,
    input_path: Annotated[Path | None, typer.Option("--input", help="Training file in the task's release "
                                                   "format (default: the task's file in the data dir).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (default: $STT_DATA_DIR or "
                                                 "../shared/data).")] = None,
    shard_size: Annotated[int | None, typer.Option(help="Examples per shard (unit of resume and of a task run) "
                                                        "[default: 16].")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Prompts per generate call (halved on out-of-memory) "
                                                        "[default: 8].")] = None,
    shots: Annotated[int | None, typer.Option(help="Few-shot demonstration pairs in the prompt [default: 8].")]
    = None,
    prompt_style: Annotated[str | None, typer.Option(help="completion (base models) or chat (model's chat "
                                                          "template) [default: completion].")] = None,
    max_new_tokens_cap: Annotated[int | None, typer.Option(help="Upper bound on generated tokens per segment "
                                                                "[default: 256].")] = None,
    set_: Annotated[list[str], typer.Option("--set", help=SET_HELP)] = [],  # noqa: B006 - typer needs a literal
    prefect: Annotated[bool, typer.Option(help="Run as a Prefect flow (--no-prefect: plain Python loop).")] = True,
) -> None:
    """Translate English training data into the target languages; writes Parquet shards to --out."""
    from stt.config import TranslateConfig, with_overrides
    from stt.stages.translate import check_config, summarize

    with _reported():
        # The named options are shortcuts for settings of TranslateConfig, whose defaults they show.
        named = {"task": task, "languages": languages, "limit": limit, "engine.model": model, "out_dir": out,
                 "input_path": input_path, "data_dir": data_dir, "shard_size": shard_size,
                 "engine.batch_size": batch_size, "prompt.num_shots": shots, "prompt.style": prompt_style,
                 "generation.max_new_tokens_cap": max_new_tokens_cap}
        config = TranslateConfig.model_validate(with_overrides({}, {**named, **_overrides(set_)}))
        check_config(config)
    with _reported("translate"):
        if prefect:
            from stt_app.flows.translate import translate

            out_dir = Path(translate(config)["out_dir"])
        else:
            from stt.jobs import translate

            _show_progress()
            out_dir = translate(config)
    typer.echo("")
    for row in summarize(out_dir):
        typer.echo(f"{row['language']}: {row['rows']}/{row['examples']} rows accepted, {row['rejects']} rejected "
                   f"({row['rejects_by_reason']}), {row['tokens_per_s']} tokens/s")
    typer.echo(f"shards: {out_dir.resolve()}")
    typer.echo(f"  look: python -c \"import pandas as pd; print(pd.read_parquet('{out_dir}'))\"")
    typer.echo(f"  rejects: {out_dir / '_rejects'}   manifest: {out_dir / '_manifest.json'}")


def _overrides(pairs: list[str]) -> dict[str, object]:
    import yaml

    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"--set expects key=value (e.g. eval.limit=8), got '{pair}'")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _print_table(table: list[dict]) -> None:
    import pandas as pd

    typer.echo(pd.DataFrame(table).to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.2f}"))


@app.command("run")
def run_cmd(
    config: Annotated[Path, typer.Option("--config", help="Preset YAML: configs/demo.yaml, configs/paper.yaml.")],
    set_: Annotated[list[str], typer.Option("--set", help="Override a setting of the preset: --set eval.limit=8 "
                                                          "(repeatable; YAML values).")]
    = [],  # noqa: B006 - typer needs a literal default
    run_dir: Annotated[str | None, typer.Option(help="Run directory (default: runs/<name>), or a URL on object "
                                                      "storage: s3://bucket/prefix.")] = None,
    prefect: Annotated[bool, typer.Option(help="Run as the Prefect flow (--no-prefect: plain Python).")] = True,
) -> None:
    """Run the whole method: translate, build sets, fine-tune, evaluate, report (zero-shot vs Self-Translate-Train)."""
    from stt.config import load_run_config
    from stt.jobs import check_run

    with _reported():
        cfg = load_run_config(config, **{**_overrides(set_), "run_dir": run_dir})
        if cfg.store_credentials:  # a Prefect block, loaded here for the plain runner too
            from stt_app.tasks.store_blocks import use_store_credentials

            use_store_credentials(cfg.store_credentials)
        check_run(cfg)
    with _reported("run"):
        if prefect:
            from stt_app.flows.self_translate_train import self_translate_train

            out = self_translate_train(cfg)
        else:
            from stt.jobs import run_pipeline

            _show_progress()
            result = run_pipeline(cfg)
            out = {**result, "table": result["table"].to_dict(orient="records"), "run_dir": str(cfg.root)}
    typer.echo("")
    _print_table(out["table"])
    typer.echo(f"\nreport: {out['report']}\nresults: {out['results']}\nplot: {out['plot']}")


@app.command("evaluate")
def evaluate_cmd(
    task: Annotated[str, typer.Option(help="gsm8k (MGSM), squad (XQuAD held-out half), mnli (XNLI), or a "
                                           "declared task.")] = "gsm8k",
    languages: Annotated[str, typer.Option(help="Comma-separated test languages, e.g. en,de,th.")] = "en,de,th",
    model: Annotated[str, typer.Option(help="Short name, .gguf file or HF folder.")] = "gemma3-270m",
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter folder to apply (from stt run / finetune).")]
    = None,
    label: Annotated[str | None, typer.Option(help="Name of the model in the outputs (default: base/adapter).")]
    = None,
    limit: Annotated[int | None, typer.Option(help="First N test items per language.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Prompts per generate call [default: 8].")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Token limit of a generated answer [default: the "
                                                            "task's: 256 for math, 32 for QA].")] = None,
    split: Annotated[str | None, typer.Option(help="The labelled split to test on, where the task has more than "
                                                   "one (XNLI: test or dev) [default: the task's first].")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (default: $STT_DATA_DIR or ../shared/data).")]
    = None,
    out: Annotated[Path, typer.Option(help="Output directory: <out>/<label>-<language>/predictions.parquet.")]
    = Path("runs/evaluate"),
    set_: Annotated[list[str], typer.Option("--set", help="Any setting of the engine or the evaluation, dotted: "
                                                          "--set engine.threads=2, --set eval.sample_seed=0.")]
    = [],  # noqa: B006 - typer needs a literal default
    prefect: Annotated[bool, typer.Option(help="Run as the Prefect flow (--no-prefect: plain Python).")] = True,
) -> None:
    """Evaluate a model (optionally with a LoRA adapter) on a task's test set; saves predictions and scores."""
    with _reported():
        langs = [x.strip() for x in languages.split(",") if x.strip()]
        # The named options are shortcuts for engine.* and eval.* settings, as --set would give them.
        named = {"engine.model": model, "engine.adapter": adapter, "engine.batch_size": batch_size,
                 "eval.batch_size": batch_size, "eval.limit": limit,
                 f"eval.max_new_tokens.{task}": max_new_tokens, f"eval.test_split.{task}": split}
        engine, cfg, data = _evaluate_settings(task, langs, {**named, **_overrides(set_)}, data_dir)
    name = label or ("base" if adapter is None else adapter.name)
    with _reported("evaluate"):
        if prefect:
            from stt_app.flows.evaluate import evaluate_model

            results = evaluate_model(task, langs, engine, cfg, str(data), str(out), name)
        else:
            from stt.jobs import evaluate

            _show_progress()
            results = evaluate(task, langs, engine, cfg, data, out, name)
    hidden = {"ci_level", "bootstrap_resamples", "bootstrap_seed"}
    _print_table([{"model": r["model"], "task": r["task"], "language": r["language"],
                   **{k: v for k, v in r["scores"].items() if k not in hidden},
                   "predictions": str(Path(r["folder"]) / "predictions.parquet")} for r in results])


def _evaluate_settings(task: str, langs: list[str], settings: dict[str, object], data_dir: Path | None
                       ) -> tuple[EngineConfig, EvalConfig, Path]:
    """`stt evaluate`'s engine and evaluation settings and data folder, each checked before any work."""
    from stt.config import EvalConfig, resolve_data_dir, with_overrides
    from stt.engine_settings import engine_config
    from stt.models import resolve_model
    from stt.prompts import language_name
    from stt.specs import get_task
    from stt.stages.evaluate import adapter_fingerprint

    get_task(task)
    for lang in langs:
        if lang != "en":
            language_name(lang)
    grouped = with_overrides({"engine": {"reuse_prefix_cache": False}, "eval": {}}, settings)
    unknown = set(grouped) - {"engine", "eval"}
    if unknown:
        _fail(f"--set {sorted(unknown)[0]}: evaluate takes engine.* and eval.* settings")
    engine, cfg = engine_config(**grouped["engine"]), EvalConfig.model_validate(grouped["eval"])
    spec = get_task(task)
    spec.test_split(cfg)
    if task in cfg.max_new_tokens and not spec.answer_tokens(cfg):
        _fail(f"--max-new-tokens: {task}'s answers are scored, not generated")
    resolve_model(engine.model)
    adapter_fingerprint(engine.adapter)
    return engine, cfg, resolve_data_dir(data_dir)


@app.command("prepare-model")
def prepare_model_cmd(
    model: Annotated[str, typer.Argument(help="Short name (gemma3-270m, smollm2-135m) or a .gguf file.")],
    out: Annotated[Path | None, typer.Option(help="Copy the Hugging Face folder here (default: only the cache).")]
    = None,
) -> None:
    """Turn a GGUF model into a Hugging Face folder (dequantised) that vLLM, peft and transformers all read."""
    import shutil

    from stt.models import hf_folder, resolve_model

    with _reported("prepare-model"):
        resolved = resolve_model(model)
        folder = hf_folder(resolved)
        if out:
            shutil.copytree(folder, out, dirs_exist_ok=True)
            folder = out
    typer.echo(f"{resolved.model_id} (sha256 {resolved.weights_sha256[:12]}): {Path(folder).resolve()}")


@app.command("result-storage")
def result_storage_cmd(
    url: Annotated[str, typer.Argument(help="Where Prefect keeps flow and task results: s3://bucket/prefix.")],
    name: Annotated[str, typer.Option(help="The S3Bucket block's name.")] = "stt-results",
) -> None:
    """Keep Prefect's results on S3 (an S3Bucket block; credentials stay with each worker's AWS settings)."""
    from stt_app.tasks.store_blocks import register

    with _reported("result-storage"):
        value = register(url, name)
    typer.echo(f"S3Bucket block {name!r} -> {url}. In every worker's environment (its flow runs inherit it):\n"
               f"  export PREFECT_DEFAULT_RESULT_STORAGE_BLOCK={value} PREFECT_RESULTS_PERSIST_BY_DEFAULT=true")


@app.command("models")
def models_cmd() -> None:
    """List the model short names."""
    from stt.models import SHORT_NAMES

    for name, m in SHORT_NAMES.items():
        typer.echo(f"{name:14} {m.description} (package {m.package})")


def _leave(code: int) -> None:
    """Exit now, worker threads or not. `os._exit` skips multiprocessing's cleanup, so the engine process
    (and a vLLM runner's group) is killed first rather than left to the parent-death signal."""
    if "stt.engines" in sys.modules:
        sys.modules["stt.engines"].kill_engine_processes()
    os._exit(code)


def _interrupt(signum: int, frame: object) -> None:
    """Ctrl-C: let Prefect mark the run crashed, then leave even if worker threads are still busy."""
    def hard_exit() -> None:
        time.sleep(10)
        typer.echo("interrupted: rerun the same command to resume (finished shards are kept)", err=True)
        sys.stderr.flush()
        # Safe: every output file is written to a temp name and renamed into place.
        _leave(130)

    threading.Thread(target=hard_exit, daemon=True).start()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGINT, _interrupt)
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted: rerun the same command to resume (finished shards are kept)", err=True)
        sys.stderr.flush()
        # Hard exit: worker threads (a shard mid-generation, Prefect retries) would otherwise keep the
        # process alive. Safe, because every output file is written to a temp name and renamed.
        _leave(130)


if __name__ == "__main__":
    main()
