"""Encoding speed by depth: ``Encoder(layers=N)`` against the whole model, ONNX fp32 and int8 on CPU.

The time a user pays to encode at a small budget: the same texts as bench/encode.py (STS-B test
sentences: short; SciFact passages: long), one fresh worker process per (backend, layers) so each
times the public ``Encoder.encode_full`` path from a loaded session, rounds interleaved on the shared
machine and each setting's best round counting. Ratios are to the whole (6-layer) model of the same
backend in the same run. Quality at each depth depends on how the model was trained (bench/train_2d.py);
this table is speed only.

    PYTHONPATH=src python bench/encode_layers.py [--threads 2] [--batch-size 32] [--long 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from encode import WARMUP_TEXTS, load_texts, token_counts

SETTINGS = [(backend, layers) for backend in ("onnx", "onnx-int8") for layers in (6, 4, 3, 2)]


def worker(backend: str, layers: int, threads: int, batch_size: int, texts_file: Path) -> None:
    from matryoshka import Encoder

    texts = json.loads(texts_file.read_text())
    encoder = Encoder(backend=backend, layers=layers, batch_size=batch_size, threads=threads)
    encoder.encode_full(texts["short"][:WARMUP_TEXTS])  # loads (or exports) the session
    result = {}
    for name in ("short", "long"):
        started = time.perf_counter()
        encoder.encode_full(texts[name])
        result[f"{name}_s"] = time.perf_counter() - started
    print(json.dumps(result))


def run_worker(backend: str, layers: int, args: argparse.Namespace, texts_file: Path) -> dict:
    command = [sys.executable, __file__, "--worker", backend, "--worker-layers", str(layers)]
    command += ["--texts-file", str(texts_file), "--threads", str(args.threads)]
    command += ["--batch-size", str(args.batch_size)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{backend} at {layers} layers failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--long", type=int, default=200, help="SciFact passages (long texts)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny run to check the script; writes nothing")
    parser.add_argument("--worker", choices=("onnx", "onnx-int8"))
    parser.add_argument("--worker-layers", type=int)
    parser.add_argument("--texts-file", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.worker_layers, args.threads, args.batch_size, args.texts_file)
        return
    started = time.perf_counter()
    short, long = load_texts(5, 100) if args.smoke else load_texts(args.long)
    runs: dict[tuple[str, int], list[dict]] = {setting: [] for setting in SETTINGS}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as scratch:
        texts_file = Path(scratch) / "texts.json"
        texts_file.write_text(json.dumps({"short": short, "long": long}))
        for round_number in range(args.rounds):
            for setting in SETTINGS:
                runs[setting].append(run_worker(*setting, args, texts_file))
                print(f"round {round_number + 1} {setting}: {runs[setting][-1]}", flush=True)
            loads.append(os.getloadavg()[0])
            if not args.smoke:
                report(args, short, long, runs, time.perf_counter() - started, loads)


def report(args, short, long, runs, wall_s, loads) -> None:
    from report import hardware, markdown_table, write_section

    sets = (("short", short), ("long", long))
    speed = {
        setting: {name: len(texts) / min(run[f"{name}_s"] for run in done) for name, texts in sets}
        for setting, done in runs.items()
    }
    rows = []
    for backend, layers in SETTINGS:
        cells = [backend, str(layers)]
        for name, _ in sets:
            rate, whole = speed[backend, layers][name], speed[backend, 6][name]
            cells.append(f"{rate:.1f} ({rate / whole:.2f}x)")
        rows.append(cells)
    markdown = "\n".join(
        [
            "## Encoding speed by depth (`Encoder(layers=N)`)",
            "",
            f"{len(short)} STS-B test sentences (short, mean {token_counts(short):.0f} tokens) and "
            f"{len(long)} SciFact passages (long, mean {token_counts(long):.0f} tokens, cut at 256), "
            f"batch size {args.batch_size}, {args.threads} threads. One fresh process per setting, "
            f"{args.rounds} interleaved rounds, best round counts; the ratio is to the whole 6-layer model "
            "of the same backend. Targets (#26): 3 layers >= 1.8x and 2 layers >= 2.5x, ONNX fp32.",
            "",
            markdown_table(["backend", "layers", "short texts/s", "long texts/s"], rows),
            "",
            f"Wall time {wall_s / 60:.1f} min on {hardware()}; 1-minute load average "
            f"{', '.join(f'{load:.1f}' for load in loads)} (start, after each round).",
        ]
    )
    print(markdown)
    print("written to", write_section("encode_layers", markdown))


if __name__ == "__main__":
    main()
