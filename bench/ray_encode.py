"""Corpus encoding: one process vs Ray Data actor pools on the same texts, rows/s and the same vectors.

Texts: the first 20,000 Flickr8k captions (a JSONL corpus with ids). One process: ``Encoder`` with all
cores, as ``matryoshka encode`` runs. Ray: ``encode_on_ray`` on a local Ray (``ray.init`` timed
separately), with 1 worker holding every core and with 2 workers of one core each; their time includes
starting the actors and writing the parquet shards. The vectors read back with ``read_shards`` are
compared with the one-process vectors (same ids in the same order, cosine per row).

    PYTHONPATH=src python bench/ray_encode.py [--texts 20000] [--workers 1,2] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def load_captions(count: int) -> list[str]:
    from matryoshka.datasets import data_path

    lines = data_path("flickr8k_caption_pairs", "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines()
    return [line.split("\t", 1)[1].strip() for line in lines if "\t" in line][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=20000)
    parser.add_argument("--workers", default="1,2", help="Ray actor pool sizes to run, comma-separated")
    parser.add_argument("--smoke", action="store_true", help="tiny run to check the script; writes nothing")
    args = parser.parse_args()
    import ray

    from matryoshka import Encoder
    from matryoshka.ray_encode import encode_on_ray, read_shards

    texts = load_captions(500 if args.smoke else args.texts)
    cores = os.cpu_count() or 1
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as scratch:
        corpus = Path(scratch) / "captions.jsonl"
        with corpus.open("w", encoding="utf-8") as handle:
            for number, text in enumerate(texts):
                handle.write(json.dumps({"_id": f"cap{number}", "text": text}) + "\n")
        started = time.perf_counter()
        encoder = Encoder(device="cpu", threads=cores)
        encoder.encode_full(texts[:16])  # loads the session
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        reference = encoder.encode_full(texts)
        single_s = time.perf_counter() - started
        loads.append(os.getloadavg()[0])
        print(f"one process: load {load_s:.1f}s, encode {single_s:.1f}s", flush=True)
        started = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        init_s = time.perf_counter() - started
        runs = []
        for workers in [int(part) for part in args.workers.split(",")]:
            out = Path(scratch) / f"ray-{workers}"
            started = time.perf_counter()
            summary = encode_on_ray(corpus, out, workers=workers)
            encode_s = time.perf_counter() - started
            started = time.perf_counter()
            ids, _, vectors = read_shards(out)
            read_s = time.perf_counter() - started
            same_ids = ids == [f"cap{number}" for number in range(len(texts))]
            cosine = float(np.sum(vectors * reference, axis=1).min())
            runs.append({"workers": workers, "encode_s": encode_s, "read_s": read_s, "shards": summary.shards,
                         "same_ids": same_ids, "cos_min": cosine})  # fmt: skip
            loads.append(os.getloadavg()[0])
            print(f"ray {workers} workers: {runs[-1]}", flush=True)
        ray.shutdown()
    if not args.smoke:
        report(len(texts), cores, load_s, single_s, init_s, runs, loads)


def report(count, cores, load_s, single_s, init_s, runs, loads) -> None:
    from report import markdown_table, write_section

    rows = [["one process (Encoder, all cores)", f"{load_s:.1f}", f"{single_s:.1f}",
             f"{count / single_s:.0f}", "1.00x", "-", "-"]]  # fmt: skip
    for run in runs:
        threads = max(1, cores // run["workers"])
        rows.append(
            [
                f"Ray Data, {run['workers']} worker(s) x {threads} thread(s), {run['shards']} shards",
                f"{init_s:.1f} (ray.init)",
                f"{run['encode_s']:.1f}",
                f"{count / run['encode_s']:.0f}",
                f"{single_s / run['encode_s']:.2f}x",
                "yes" if run["same_ids"] else "NO",
                f"{run['cos_min']:.6f}",
            ]
        )
    headers = ["engine", "start s", "encode s", "rows/s", "vs one process", "same ids, order", "cos min"]
    load_text = ", ".join(f"{load:.1f}" for load in loads)
    markdown = f"""## Corpus encoding: one process vs Ray Data

{count} Flickr8k captions (a JSONL corpus with ids), all-MiniLM-L6-v2 on the default CPU backend, {cores}
cores. "encode s" for one process is `Encoder.encode_full` after loading the model; for Ray it is the
whole `encode_on_ray` call on an already started local Ray (planning shards, starting the actors, each
loading the model, encoding, writing parquet shards). "cos min" is each Ray row's vector against the
one-process vector of the same id, read back with `read_shards`.

{markdown_table(headers, rows)}

On one machine Ray cannot be faster: the same cores do the same forward passes, split between actors
instead of between threads, and Ray adds a local cluster start, one model load per actor, object
store traffic for the shard plan and a parquet write per shard. What it buys is the part that does not
exist on one machine: workers on many nodes (one GPU each), each reading and writing its own shards,
and a killed job that resumes from the shards on disk. On a cluster the fixed costs stay about the
same while the encoding divides by the number of workers.

1-minute load average {load_text} (start, after one process, after each Ray run): other jobs shared
the cores, so absolute rates are noisy; rows ran one after another in one process.
"""
    write_section("ray_encode", markdown)


if __name__ == "__main__":
    main()
