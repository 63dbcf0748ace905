"""CPU encoding backends side by side: sentence-transformers vs this project's torch, ONNX fp32, ONNX int8.

The peers include sentence-transformers' own ONNX backend (``backend="onnx"``, its optimum export) and
its quantised ONNX (``export_dynamic_quantized_onnx_model``, avx512_vnni), in their own environment:
sentence-transformers 6.3's ``onnx`` extra does not resolve (optimum-onnx needs transformers < 4.58),
so ``bench/peer_env.sh`` installs 5.7.0 with optimum-onnx into ``.venv-st-onnx``. Without that
environment those two rows are left out.

Same texts (STS-B test sentences: short; SciFact passages: long), same batch size, same thread count
for every backend. Each backend runs in its own worker process, so peak memory is its own; rounds
interleave the backends so that load from other processes on a shared machine hits all of them, and
each backend's best round counts. Quality: cosine to the sentence-transformers vectors, and STS-B test
Spearman at 384 and 64 dims.

    PYTHONPATH=src python bench/encode.py [--threads 2] [--batch-size 32] [--long 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OURS = ("sentence-transformers", "torch", "onnx", "onnx-int8")
PEERS = ("st-onnx", "st-onnx-int8")  # run by PEER_PYTHON
BACKENDS = OURS + PEERS
PEER_PYTHON = Path(__file__).resolve().parent.parent / ".venv-st-onnx" / "bin" / "python"
WARMUP_TEXTS = 16


def load_texts(long_count: int, short_count: int = 0) -> tuple[list[str], list[str]]:
    from matryoshka.datasets import data_path, load_stsb

    pairs = load_stsb("test")
    short = list(dict.fromkeys(pairs.first + pairs.second))[: short_count or None]
    long = []
    with data_path("scifact", "corpus.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            long.append(f"{record.get('title', '')} {record['text']}".strip())
            if len(long) == long_count:
                break
    return short, long


def st_onnx_model(backend: str, threads: int, model_path: str, peer_dir: Path):
    """sentence-transformers' ONNX backend on a copy of the model (its exports are written beside it),
    exported on the first worker and reused by later rounds; the session gets ``threads`` threads."""
    import shutil

    import onnxruntime
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    if not (peer_dir / "onnx" / "model_qint8_avx512_vnni.onnx").exists():
        shutil.copytree(model_path, peer_dir, dirs_exist_ok=True)
        exported = SentenceTransformer(str(peer_dir), backend="onnx", device="cpu", local_files_only=True)
        exported.save_pretrained(str(peer_dir))
        export_dynamic_quantized_onnx_model(exported, "avx512_vnni", str(peer_dir))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    file_name = "onnx/model_qint8_avx512_vnni.onnx" if backend == "st-onnx-int8" else "onnx/model.onnx"
    kwargs = {"file_name": file_name, "session_options": options, "provider": "CPUExecutionProvider"}
    return SentenceTransformer(
        str(peer_dir), backend="onnx", device="cpu", local_files_only=True, model_kwargs=kwargs
    )


def worker(backend: str, args: argparse.Namespace) -> None:
    """Encode both text sets with one backend; write vectors and wall times (model load not timed)."""
    threads, batch_size, out = args.threads, args.batch_size, args.out
    texts = json.loads(args.texts_file.read_text())
    if backend in PEERS or backend == "sentence-transformers":
        if backend in PEERS:
            model = st_onnx_model(backend, threads, args.model_path, args.peer_dir)
        else:
            import torch
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(threads)
            model = SentenceTransformer(args.model_path, device="cpu", local_files_only=True)

        def encode(batch: list[str]) -> np.ndarray:
            return model.encode(
                batch, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
            )
    else:
        from matryoshka import Encoder

        encoder = Encoder(device="cpu", backend=backend, batch_size=batch_size, threads=threads)
        if backend == "torch":
            import torch

            torch.set_num_threads(threads)
        encode = encoder.encode_full
    encode(texts["short"][:WARMUP_TEXTS])  # loads the model / session
    result, vectors = {}, {}
    for name in ("short", "long"):
        started = time.perf_counter()
        vectors[name] = np.asarray(encode(texts[name]), dtype=np.float32)
        result[f"{name}_s"] = time.perf_counter() - started
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.savez(out, **vectors)
    print(json.dumps(result))


def run_worker(backend: str, args: argparse.Namespace, texts_file: Path, out: Path) -> dict:
    from matryoshka.models import resolve_model

    python = str(args.peer_python) if backend in PEERS else sys.executable
    command = [python, __file__, "--worker", backend, "--texts-file", str(texts_file)]
    command += ["--threads", str(args.threads), "--batch-size", str(args.batch_size), "--out", str(out)]
    command += ["--model-path", str(resolve_model().path), "--peer-dir", str(texts_file.parent / "st-onnx")]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{backend} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def stsb_spearman(vectors: np.ndarray, short: list[str], dim: int) -> float:
    from matryoshka import truncate
    from matryoshka.datasets import load_stsb
    from matryoshka.eval.metrics import spearman

    pairs = load_stsb("test")
    index = {text: row for row, text in enumerate(short)}
    prefix = truncate(vectors, dim)
    first, second = prefix[[index[t] for t in pairs.first]], prefix[[index[t] for t in pairs.second]]
    return 100 * spearman(np.sum(first * second, axis=1), pairs.scores)


def ensure_exports() -> dict[str, float]:
    """Build the ONNX exports before timing (seconds spent; 0 when they were cached already)."""
    from matryoshka import Encoder

    spent = {}
    for backend in ("onnx", "onnx-int8"):
        started = time.perf_counter()
        _ = Encoder(device="cpu", backend=backend).runner
        spent[backend] = time.perf_counter() - started
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--long", type=int, default=200, help="SciFact passages (long texts)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny run to check the script; writes nothing")
    parser.add_argument("--worker", choices=BACKENDS)
    parser.add_argument("--texts-file", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--model-path")
    parser.add_argument("--peer-dir", type=Path)
    parser.add_argument("--peer-python", type=Path, default=PEER_PYTHON)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args)
        return
    bench_started = time.perf_counter()
    short, long = load_texts(5, 100) if args.smoke else load_texts(args.long)
    setup = ensure_exports()
    backends = OURS + (PEERS if args.peer_python.exists() else ())
    if backends == OURS:
        print(f"no {args.peer_python}: the sentence-transformers ONNX rows are left out (bench/peer_env.sh)")
    runs: dict[str, list[dict]] = {backend: [] for backend in backends}
    loads = [os.getloadavg()[0]]
    vectors: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        texts_file = Path(scratch) / "texts.json"
        texts_file.write_text(json.dumps({"short": short, "long": long}))
        for round_number in range(args.rounds):
            for backend in backends:
                out = Path(scratch) / f"{backend}.npz"
                runs[backend].append(run_worker(backend, args, texts_file, out))
                print(f"round {round_number + 1} {backend}: {runs[backend][-1]}", flush=True)
                if backend not in vectors:
                    with np.load(out) as saved:
                        vectors[backend] = {name: saved[name] for name in ("short", "long")}
            loads.append(os.getloadavg()[0])
            if not args.smoke:  # after every round, so a cut-short run still leaves its measurements
                wall_s = time.perf_counter() - bench_started
                report(args, short, long, runs, vectors, setup, wall_s, loads)


def report(args, short, long, runs, vectors, setup, wall_s, loads) -> None:
    from report import hardware, markdown_table, write_section

    reference = vectors["sentence-transformers"]
    best = {
        backend: {name: min(run[f"{name}_s"] for run in runs[backend]) for name in ("short", "long")}
        for backend in runs
    }
    speed = {b: {n: len(t) / best[b][n] for n, t in (("short", short), ("long", long))} for b in runs}
    rows, summary = [], {}
    for backend in runs:
        cosines = np.concatenate(
            [np.sum(vectors[backend][n] * reference[n], axis=1) for n in ("short", "long")]
        )
        spearman = {dim: stsb_spearman(vectors[backend]["short"], short, dim) for dim in (384, 64)}
        ratio = {n: speed[backend][n] / speed["sentence-transformers"][n] for n in ("short", "long")}
        summary[backend] = {"cos_min": float(cosines.min()), "ratio": ratio, "spearman": spearman}
        rows.append(
            [
                backend,
                f"{speed[backend]['short']:.1f} ({ratio['short']:.2f}x)",
                f"{speed[backend]['long']:.1f} ({ratio['long']:.2f}x)",
                f"{max(run['peak_rss_mb'] for run in runs[backend]):.0f}",
                f"{cosines.min():.5f}",
                f"{cosines.mean():.5f}",
                f"{spearman[384]:.2f}",
                f"{spearman[64]:.2f}",
            ]
        )
    torch_spearman = summary["torch"]["spearman"]
    onnx, int8 = summary["onnx"], summary["onnx-int8"]
    bars = [
        ("ONNX fp32 min cosine to torch >= 0.9999", f"{onnx['cos_min']:.6f}", onnx["cos_min"] >= 0.9999),
        (
            "ONNX fp32 >= 1.3x sentence-transformers (short / long)",
            f"{onnx['ratio']['short']:.2f}x / {onnx['ratio']['long']:.2f}x",
            min(onnx["ratio"].values()) >= 1.3,
        ),
        (
            "ONNX int8 >= 2.5x sentence-transformers on short texts",
            f"{int8['ratio']['short']:.2f}x",
            int8["ratio"]["short"] >= 2.5,
        ),
    ]
    for dim in (384, 64):
        delta = int8["spearman"][dim] - torch_spearman[dim]
        bars.append(
            (f"ONNX int8 STS-B Spearman within 0.5 of torch at {dim}", f"{delta:+.2f}", abs(delta) <= 0.5)
        )
    bars += peer_bars(speed)
    headers = ["backend", "short texts/s", "long texts/s", "peak RSS MB", "cos min", "cos mean"]
    headers += ["STS-B Spearman 384", "STS-B Spearman 64"]
    short_tokens, long_tokens = token_counts(short), token_counts(long)
    markdown = "\n".join(
        [
            "## Encoding on CPU: backends side by side",
            "",
            f"{len(short)} STS-B test sentences (short, mean {short_tokens:.0f} tokens) and the first "
            f"{len(long)} SciFact passages (long, title + abstract, mean {long_tokens:.0f} tokens, "
            f"cut at 256), batch size {args.batch_size}, {args.threads} threads for every backend "
            "(torch.set_num_threads / ONNX Runtime intra-op threads). Each backend runs in its own "
            f"process; {len(runs['torch'])} interleaved rounds, the best round's wall time counts "
            "(the machine "
            "is shared with other jobs). Speed ratios are to sentence-transformers `encode` (torch, CPU). "
            "Cosines are to the sentence-transformers vectors over both text sets; Spearman (x100) is "
            "on STS-B test at 384 and 64 dims. Peak RSS is the worker process's, libraries included.",
            "",
            markdown_table(headers, rows),
            "",
            markdown_table(
                ["target (issues #7, #26)", "measured", "met"],
                [[n, m, "yes" if ok else "NO"] for n, m, ok in bars],
            ),
            "",
            f"ONNX export setup before timing: fp32 {setup['onnx']:.1f}s, int8 {setup['onnx-int8']:.1f}s "
            "(0 s-ish when cached). Wall time of the whole benchmark: "
            f"{wall_s / 60:.1f} min on {hardware()}; 1-minute load average "
            f"{', '.join(f'{load:.1f}' for load in loads)} (start, after each round): other jobs shared the "
            "cores, so absolute rates are low and noisy; the ratios come from interleaved runs.",
        ]
    )
    print(markdown)
    print("written to", write_section("encode", markdown))


def peer_bars(speed: dict) -> list[tuple[str, str, bool]]:
    """Issue #26's long-text targets against sentence-transformers' ONNX backends, when they ran."""
    bars = []
    for ours, peer, target in (("onnx", "st-onnx", 1.1), ("onnx-int8", "st-onnx-int8", 1.3)):
        if peer in speed:
            short, long = (speed[ours][n] / speed[peer][n] for n in ("short", "long"))
            name = f"{ours} >= {target}x {peer} (sentence-transformers' ONNX) on long texts (short / long)"
            bars.append((name, f"{short:.2f}x / {long:.2f}x", long >= target))
    return bars


def token_counts(texts: list[str]) -> float:
    from matryoshka.models import resolve_model
    from matryoshka.onnx_backend import load_tokenizer

    tokenizer, _ = load_tokenizer(resolve_model())
    return float(np.mean([len(encoding.ids) for encoding in tokenizer.encode_batch(texts)]))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
