"""LoRA on llama.cpp against transformers, per token, on the same weights in float32 (issue 35).

benchmarks/lora_parity.py compared Q4_K_M llama.cpp with fp32 transformers: the engines' own difference there
(~0.1 nats per token) hides an adapter applied a little wrong. Here llama.cpp runs the same weights in an F32
GGUF (stt.gguf_f32: every tensor of the Q4_K_M file dequantised as transformers' loader does it; checked
below), so both engines compute with the same numbers and the comparison can be tight.

For each of 3 adapters (rank 8, trained here, seeded: NLI on the English XNLI dev set standing in for MultiNLI,
GSM8K, SQuAD on English XQuAD) and 15 held-out real items (5 per task, each after a one-item demonstration of its
task, the prefix shared by that task's 5 items), the log-probability of every token is computed by:
- transformers in fp32: the base model, and the adapter applied unmerged by peft (W x + s B A x, the form
  llama.cpp computes); merged weights (the engine's default) are compared with that too;
- the llama.cpp engine (stt.engines.llamacpp_engine, as it ships: F16 KV cache, flash attention off) on the F32
  GGUF and on the Q4_K_M GGUF, the adapter converted by stt.lora_gguf (F32 LoRA tensors), each task's 5 items
  in one batch of 5 sequences, two ways: whole (prefix decoded into every sequence), and with the prefix decoded
  once into sequence 0 and its cells shared into the 5 sequences (the engine's shared-prefix generation path).
Every comparison is over the same tokens: the items' own tokens after the prefix (the first one excepted, whose
logits are the prefix's last row, which the shared path does not compute).
Negative control: each adapter with its LoRA B scaled by 0.9, on llama.cpp F32, against transformers' full
adapter: it must stand out of the tolerance that the full adapter meets.

    python benchmarks/lora_parity_f32.py OUT_DIR [--steps 30] [--rows 120] [--label NAME] [--f32-only]
    python benchmarks/lora_parity_f32.py --build-exact-gelu LIB_DIR    # the diagnosis build, then:
    LLAMA_CPP_LIB_PATH=LIB_DIR python benchmarks/lora_parity_f32.py OUT_DIR --label exact-gelu --f32-only

The diagnosis build: llama.cpp's CPU backend computes GELU through a table indexed by the fp16-rounded input,
fp16 values out (GGML_GELU_FP16, a #define in ggml-cpu/vec.h, no build option). `--build-exact-gelu` compiles
the installed llama-cpp-python's own ggml-cpu without it (setup.sh's flags) into a copy of its library folder.

Resumable: adapters, converted files and every engine's log-probabilities are kept in OUT_DIR; figures go to
OUT_DIR/lora_parity_f32[-NAME].json. `--label` names a run against another llama.cpp build (LLAMA_CPP_LIB_PATH):
its llama.cpp results are cached under that label, transformers' are shared.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_parity import DATA, MODEL, train  # noqa: E402 - the issue-23 script's seeded adapters

from stt.engine_settings import LlamaCppSettings, TransformersSettings  # noqa: E402
from stt.engines.llamacpp_engine import LlamaCppEngine  # noqa: E402
from stt.engines.tokenizer import own_tokenizer  # noqa: E402
from stt.engines.transformers_engine import TransformersEngine  # noqa: E402
from stt.gguf_f32 import f32_gguf  # noqa: E402
from stt.models import ResolvedModel, hf_folder  # noqa: E402
from stt.specs import get_task  # noqa: E402

TASKS = ("mnli", "gsm8k", "squad")
ITEMS = 5  # per task
MAX_TOKENS = 320  # longer items are skipped (a SQuAD context can run to 600 tokens: time, not information)
SCALE = 0.9  # the negative control's LoRA B factor

Prompt = tuple[list[int], list[int]]  # (shared prefix ids, the item's own ids)


def source(task: str) -> Path:
    # MultiNLI is not available offline: the English XNLI dev set is the project's declared stand-in.
    return DATA / "xnli" / "xtreme_dev-en.tsv" if task == "mnli" else get_task(task).default_source(DATA)


def prompts(tokenizer, task: str, rows: int) -> list[Prompt]:
    """ITEMS held-out items of the task (after the `rows` trained on), each after one demonstration."""
    spec = get_task(task)
    examples = spec.load(source(task))
    demo = spec.pair(examples[rows])
    prefix = tokenizer(demo.prompt + demo.target + "\n\n")["input_ids"]
    out = []
    for ex in examples[rows + 1 :]:
        pair = spec.pair(ex)
        # Tokenised apart, as the engine tokenises a suffix after a shared prefix.
        own = tokenizer(pair.prompt + pair.target, add_special_tokens=False)["input_ids"]
        if len(prefix) + len(own) <= MAX_TOKENS:
            out.append((prefix, own))
        if len(out) == ITEMS:
            return out
    raise RuntimeError(f"{task}: fewer than {ITEMS} items of at most {MAX_TOKENS} tokens")


def scaled_adapter(adapter: Path, factor: float) -> Path:
    """A copy of a peft adapter with every LoRA B multiplied by `factor` (the adapter's delta times factor)."""
    from safetensors.torch import load_file, save_file

    out = adapter.with_name(f"{adapter.name}-x{factor}")
    if (out / "adapter_model.safetensors").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(adapter, tmp)
    weights = load_file(adapter / "adapter_model.safetensors")
    weights = {k: v * factor if "lora_B" in k else v for k, v in weights.items()}
    save_file(weights, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
    tmp.rename(out)
    return out


def cached(path: Path, compute) -> list[np.ndarray]:
    """Per-prompt arrays kept in OUT_DIR, so a rerun resumes where it stopped."""
    if path.is_file():
        with np.load(path) as z:
            return [z[f"a{i}"] for i in range(len(z.files))]
    arrays = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".tmp.npz"), **{f"a{i}": a for i, a in enumerate(arrays)})
    path.with_suffix(".tmp.npz").rename(path)
    return arrays


def transformers_logprobs(adapter: Path | None, items: list[Prompt], merged: bool) -> list[np.ndarray]:
    """Log-probability of every token after the first of prefix + item, one item per forward pass."""
    engine = TransformersEngine(MODEL, TransformersSettings(adapter=adapter, dtype="float32",
                                                    reuse_prefix_cache=False), merge_adapter=merged)
    out = []
    for prefix, own in items:
        ids = prefix + own
        with torch.no_grad():
            lp = engine.model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
        out.append(lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy())
    del engine
    gc.collect()
    return out


@contextlib.contextmanager
def kv_cache_f32() -> Iterator[None]:
    """The llama.cpp engine's context with an F32 KV cache instead of its F16 one (a diagnosis, not a setting
    of the engine): llama.cpp's C defaults, which the engine starts from, patched for the duration."""
    import llama_cpp as L

    default = L.llama_context_default_params

    def patched():
        params = default()
        params.type_k = params.type_v = 0  # GGML_TYPE_F32
        return params

    L.llama_context_default_params = patched
    try:
        yield
    finally:
        L.llama_context_default_params = default


def llama_logprobs(model: ResolvedModel, adapter: Path | None, items: list[Prompt], shared: bool) -> list[np.ndarray]:
    """Log-probabilities of every token after the first, the items of one task decoded in one batch of
    sequences 1..n. `shared`: the prefix decoded once into sequence 0 and copied into each item's sequence (the
    engine's own _set_prefix and _copy_prefix); the prefix tokens' rows are then NaN (not computed)."""
    engine = LlamaCppEngine(model, LlamaCppSettings(adapter=adapter, batch_size=len(items),
                                                reuse_prefix_cache=shared))
    prefix = items[0][0]
    assert all(p == prefix for p, _ in items)
    entries, rows = [], []
    if shared:
        engine._set_prefix(prefix)
    for seq, (_, own) in enumerate(items, start=1):
        start = engine._copy_prefix(seq) if shared else 0
        ids = own if shared else prefix + own
        rows.append(len(entries))
        entries += [(t, start + k, seq, True) for k, t in enumerate(ids)]
    engine._decode(entries)
    out = []
    for row, (_, own) in zip(rows, items, strict=True):
        ids = prefix + own
        lp = np.full(len(ids) - 1, np.nan)
        skip = len(prefix) if shared else 0  # positions without a row of their own in this batch
        for pos in range(skip + 1, len(ids)):  # token `pos` is read from the row of position pos - 1
            lp[pos - 1] = engine._log_softmax(engine._logits(row + pos - 1 - skip))[ids[pos]]
        out.append(lp)
    del engine
    gc.collect()
    return out


def item_tokens(items: list[Prompt], values: list[np.ndarray]) -> np.ndarray:
    """The items' own tokens after their first (the same tokens in every comparison), concatenated."""
    return np.concatenate([v[len(p):] for (p, _), v in zip(items, values, strict=True)])


def dist(x: np.ndarray) -> dict:
    a = np.abs(x)
    return {"mean": float(a.mean()), "median": float(np.median(a)), "p95": float(np.percentile(a, 95)),
            "max": float(a.max()), "tokens": int(a.size)}


def check_weights(f32: ResolvedModel) -> dict:
    """The F32 GGUF read by transformers' own GGUF loader against stt's HF folder (the transformers engine's
    weights): the same tensors, bit for bit. And Gemma's norms, stored as w - 1 there and applied as 1 + w, against
    the GGUF's values, which llama.cpp multiplies by directly."""
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    folder = hf_folder(MODEL)
    ours = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
    theirs = AutoModelForCausalLM.from_pretrained(str(f32.path.parent), gguf_file=f32.path.name,
                                                  dtype=torch.float32).state_dict()
    same = [k for k in ours if torch.equal(ours[k], theirs[k])]
    reader = GGUFReader(f32.path)
    norm_ulps = 0.0
    for t in reader.tensors:
        if t.name.endswith("norm.weight"):
            g = torch.from_numpy(np.array(t.data, dtype=np.float32))
            applied = 1.0 + (g - 1.0)  # what transformers multiplies by, in float32
            norm_ulps = max(norm_ulps, float(((applied - g).abs() / torch.finfo(torch.float32).eps
                                              / g.abs().clamp_min(1e-30)).max()))
    return {"tensors": len(ours), "bit_identical_tensors": len(same),
            "norm_weights_max_relative_difference_in_float32_eps": norm_ulps}


def build_exact_gelu(lib: Path) -> None:
    """llama-cpp-python's libraries with ggml-cpu rebuilt from its own sdist, GELU computed in fp32."""
    import subprocess
    import tarfile

    import llama_cpp

    from stt.lora_gguf import _version, fetch_sdist

    work = lib.with_name(lib.name + "-src")
    root = work / f"llama_cpp_python-{_version()}" / "vendor" / "llama.cpp"
    if not root.is_dir():
        with tarfile.open(fetch_sdist()) as tar:
            tar.extractall(work, filter="data")
    vec = root / "ggml" / "src" / "ggml-cpu" / "vec.h"
    vec.write_text(vec.read_text().replace("#define GGML_GELU_FP16\n", "// GELU in fp32 (diagnosis build)\n"))
    flags = ["-DBUILD_SHARED_LIBS=ON", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DGGML_AVX=ON",
             "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_AVX512=OFF", "-DGGML_AMX_TILE=OFF",
             "-DGGML_AMX_INT8=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
             "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_SERVER=OFF"]
    subprocess.run(["cmake", "-S", str(root), "-B", str(root / "build"), *flags], check=True)
    subprocess.run(["cmake", "--build", str(root / "build"), "--target", "ggml-cpu", "-j", "2"], check=True)
    # The installed libraries, ggml-cpu replaced: libggml loads it from its own folder ($ORIGIN).
    shutil.copytree(Path(llama_cpp.__file__).parent / "lib", lib, dirs_exist_ok=True)
    built = next(p for p in (root / "build" / "bin").glob("libggml-cpu.so.*") if not p.is_symlink())
    for target in lib.glob("libggml-cpu.so*"):
        target.unlink()
        shutil.copyfile(built, target)
    print(f"LLAMA_CPP_LIB_PATH={lib}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path, nargs="?")
    ap.add_argument("--build-exact-gelu", type=Path, metavar="LIB_DIR", help="build the diagnosis library, exit")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rows", type=int, default=120)
    ap.add_argument("--label", default="", help="names a run against another llama.cpp build")
    ap.add_argument("--f32-only", action="store_true", help="skip the Q4_K_M GGUF")
    args = ap.parse_args()
    if args.build_exact_gelu:
        build_exact_gelu(args.build_exact_gelu.resolve())
        return
    if args.out is None:
        ap.error("OUT_DIR is required")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    adapters = {task: train(task, out / task, args.rows, args.steps) for task in TASKS}
    controls = {task: scaled_adapter(a, SCALE) for task, a in adapters.items()}
    f32 = f32_gguf(MODEL)
    tokenizer = own_tokenizer(hf_folder(MODEL))
    items = {task: prompts(tokenizer, task, args.rows) for task in TASKS}
    cache = out / "logprobs"
    ll_cache = cache / (f"llama-{args.label}" if args.label else "llama")

    def tf(name: str, adapter: Path | None, merged: bool = False) -> dict[str, list[np.ndarray]]:
        return {task: cached(cache / "transformers" / f"{name}{'-merged' if merged else ''}-{task}.npz",
                             lambda task=task: transformers_logprobs(adapter, items[task], merged)) for task in TASKS}

    def ll(kind: str, model: ResolvedModel, name: str, adapter: Path | None, shared: bool,
           kv_f32: bool = False) -> dict[str, list[np.ndarray]]:
        tag = f"{kind}{'-kvf32' if kv_f32 else ''}-{name}-{'shared' if shared else 'whole'}"
        result = {}
        for task in TASKS:
            def run(task=task):
                with kv_cache_f32() if kv_f32 else contextlib.nullcontext():
                    return llama_logprobs(model, adapter, items[task], shared)
            result[task] = cached(ll_cache / f"{tag}-{task}.npz", run)
        return result

    named: dict[str, Path | None] = {"base": None, **{f"{t}": a for t, a in adapters.items()},
                                     **{f"{t}-x{SCALE}": a for t, a in controls.items()}}
    tfr = {name: tf(name, a) for name, a in named.items()}
    tf_merged = {t: tf(t, adapters[t], merged=True) for t in TASKS}
    # (weights, KV cache): the engine as it ships (F16 cache) on both GGUFs, and the F32 GGUF with an F32 cache.
    configs = [("f32", "f16"), ("f32", "f32")] + ([] if args.f32_only else [("q4", "f16")])
    llr: dict[tuple[str, str, str, bool], dict] = {}
    for kind, kv in configs:
        model = f32 if kind == "f32" else MODEL
        for name, a in named.items():
            if kind == "q4" and name.endswith(f"x{SCALE}"):
                continue  # the control belongs to the F32 comparison
            for shared in (False, True):
                llr[kind, kv, name, shared] = ll(kind, model, name, a, shared, kv_f32=kv == "f32")
                print(f"{time.perf_counter() - t0:.0f}s llama.cpp {kind} kv {kv} {name} shared={shared}", flush=True)

    def tokens(result: dict[str, list[np.ndarray]]) -> np.ndarray:
        return np.concatenate([item_tokens(items[t], result[t]) for t in TASKS])

    figures: dict = {"model": str(MODEL.path), "f32_gguf": str(f32.path), "label": args.label,
                     "items_per_task": ITEMS, "tokens_compared": int(tokens(tfr["base"]).size),
                     "prefix_tokens": {t: len(items[t][0][0]) for t in TASKS},
                     "weights": check_weights(f32)}
    tb = tokens(tfr["base"])
    figures["adapters"] = {}
    for t in TASKS:
        own = item_tokens(items[t], tfr[t][t]) - item_tokens(items[t], tfr["base"][t])
        figures["adapters"][t] = {"transformers_mean_abs_shift_all_items": float(np.abs(tokens(tfr[t]) - tb).mean()),
                                  "transformers_mean_abs_shift_own_task": float(np.abs(own).mean()),
                                  "merged_vs_unmerged": dist(tokens(tf_merged[t]) - tokens(tfr[t]))}
    for kind, kv in configs:
        section: dict = {}
        for shared in (False, True):
            lb = tokens(llr[kind, kv, "base", shared])
            adapted, shifts, per = [], [], {}
            for t in TASKS:
                la, ta = tokens(llr[kind, kv, t, shared]), tokens(tfr[t])
                adapted.append(la - ta)
                shifts.append((la - lb) - (ta - tb))
                per[t] = {"adapted": dist(adapted[-1]), "shift_difference": dist(shifts[-1])}
                if kind == "f32":
                    scaled = tokens(llr[kind, kv, f"{t}-x{SCALE}", shared])
                    per[t][f"control_x{SCALE}_vs_transformers_full"] = dist(scaled - ta)
                    per[t][f"control_x{SCALE}_vs_transformers_x{SCALE}"] = dist(scaled - tokens(tfr[f"{t}-x{SCALE}"]))
            section["shared_prefix" if shared else "whole"] = {
                "base": dist(lb - tb), "adapted_all_adapters": dist(np.concatenate(adapted)),
                "shift_difference_all_adapters": dist(np.concatenate(shifts)), "per_adapter": per}
        section["shared_vs_whole"] = {name: dist(tokens(llr[kind, kv, name, True]) - tokens(llr[kind, kv, name, False]))
                                      for name in ("base", *TASKS)}
        figures[f"llama_{kind}_kv_{kv}"] = section
    figures["seconds"] = time.perf_counter() - t0
    name = f"lora_parity_f32-{args.label}.json" if args.label else "lora_parity_f32.json"
    (out / name).write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
