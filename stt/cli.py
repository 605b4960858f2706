"""`stt` command line. Bad arguments give one clear line and exit code 2, never a traceback.

The library itself does not import Prefect; the commands that run flows import them when called.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from stt.errors import SttError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Self-Translate-Train: a model translates its own English training data.")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command("translate")
def translate_cmd(
    task: Annotated[str, typer.Option(help="Task: gsm8k (math), squad (QA), mnli (NLI; needs --input).")] = "gsm8k",
    languages: Annotated[str, typer.Option(help="Comma-separated target languages, e.g. de,th.")] = "de,th",
    limit: Annotated[int | None, typer.Option(help="Translate only the first N training examples.")] = None,
    model: Annotated[str, typer.Option(help="Short name (gemma3-270m, smollm2-135m), .gguf file or HF folder.")]
    = "gemma3-270m",
    out: Annotated[Path, typer.Option(help="Output directory; rerunning into it resumes.")] = Path("runs/translate"),
    input_path: Annotated[Path | None, typer.Option("--input", help="Training file in the task's release "
                                                   "format (default: the task's file in the data dir).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (default: $STT_DATA_DIR or "
                                                 "../shared/data).")] = None,
    shard_size: Annotated[int, typer.Option(help="Examples per shard (unit of resume and of a task run).")] = 16,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call (halved on out-of-memory).")] = 8,
    shots: Annotated[int, typer.Option(help="Few-shot demonstration pairs in the prompt.")] = 8,
    prompt_style: Annotated[str, typer.Option(help="completion (base models) or chat (model's chat template).")]
    = "completion",
    max_new_tokens_cap: Annotated[int, typer.Option(help="Upper bound on generated tokens per segment.")] = 256,
    prefect: Annotated[bool, typer.Option(help="Run as a Prefect flow (--no-prefect: plain Python loop).")] = True,
) -> None:
    """Translate English training data into the target languages; writes Parquet shards to --out."""
    from stt.config import EngineConfig, GenerationParams, PromptConfig, TranslateConfig
    from stt.translate import check_config, run_translate, summarize

    try:
        config = TranslateConfig(
            task=task, languages=languages, limit=limit, input_path=input_path, data_dir=data_dir, out_dir=out,
            shard_size=shard_size, engine=EngineConfig(model=model, batch_size=batch_size),
            generation=GenerationParams(max_new_tokens_cap=max_new_tokens_cap),
            prompt=PromptConfig(style=prompt_style, num_shots=shots),
        )
        check_config(config)
    except ValidationError as exc:
        err = exc.errors()[0]
        _fail(f"invalid {'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
    except SttError as exc:
        _fail(str(exc))
    try:
        if prefect:
            from flows.translate import translate

            out_dir = Path(translate(config)["out_dir"])
        else:
            out_dir = run_translate(config)
    except SttError as exc:
        _fail(str(exc))
    except Exception as exc:  # the flow's logs above hold the traceback
        typer.echo(f"error: translate failed: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("")
    for row in summarize(out_dir):
        typer.echo(f"{row['language']}: {row['rows']}/{row['examples']} rows accepted, {row['rejects']} rejected "
                   f"({row['rejects_by_reason']}), {row['tokens_per_s']} tokens/s")
    typer.echo(f"shards: {out_dir.resolve()}")
    typer.echo(f"  look: python -c \"import pandas as pd; print(pd.read_parquet('{out_dir}'))\"")
    typer.echo(f"  rejects: {out_dir / '_rejects'}   manifest: {out_dir / '_manifest.json'}")


@app.command("models")
def models_cmd() -> None:
    """List the model short names."""
    from stt.models import SHORT_NAMES

    for name, m in SHORT_NAMES.items():
        typer.echo(f"{name:14} {m.description} (package {m.package})")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted: rerun the same command to resume (finished shards are kept)", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
