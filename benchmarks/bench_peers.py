"""idxlake against its peers, each against the in-memory limit measured in its own process, one run.

Usage::

    bash benchmarks/peers.sh                         # once: the peers' venvs in benchmarks/.peers/
    .venv/bin/python benchmarks/bench_peers.py [--reps 3] [--only NAME ...] [--json out.json]

Ingests the bundled MNIST into a temporary Delta table, then runs every configuration in a fresh
interpreter: idxlake's in this venv, each peer's in its own (``benchmarks/peers.sh``: Daft, HF
datasets and Ray Data; Petastorm, which needs pyarrow < 15 and numpy < 2; Mosaic Streaming, whose
pins break HF datasets). Every configuration yields shuffled batches of 256 rows of the train split
(``image`` uint8 ``[256, 1, 28, 28]``, ``label`` int64) from the same table version, through its own
documented PyTorch path (``peer_loaders.py`` says which), checked batch by batch. Each process times
blocks of 3 consecutive epochs, interleaved with blocks of the in-memory limit (a uint8 tensor,
``randperm``, two ``index_select`` per batch) in the same process at 1 torch thread, after a warm-up
block; the ratio to that limit is what compares across processes on a noisy machine. A peer whose
venv is missing is reported as not installed, not guessed.

Classes compare like with like: ``warm`` holds the decoded split in memory after the first epoch
(idxlake's decode cache, a collected Daft frame, a materialized Ray dataset, HF's memory-mapped Arrow
cache, Mosaic's uncompressed shards in the page cache); ``cold`` decodes the Parquet files every
epoch; ``workers`` uses 2 DataLoader worker processes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_loaders import PEERS, count, in_memory, measure  # the shared harness (imports nothing of idxlake)

HERE = Path(__file__).resolve().parent

IDXLAKE: dict[str, dict] = {
    "idxlake, ds.dataloader()": {"class": "warm", "cache": None, "workers": 0},
    "idxlake, ds.dataloader(num_workers=2)": {"class": "workers", "cache": None, "workers": 2},
    "idxlake, cache_bytes=0": {"class": "cold", "cache": 0, "workers": 0},
    "idxlake, cache_bytes=0, num_workers=2": {"class": "workers", "cache": 0, "workers": 2},
}
"""idxlake's configurations: ``DeltaIterableDataset(columns=("image", "label"))`` through ``ds.dataloader``."""

PEER_CLASS = {
    "Daft, to_arrow_iter": "warm", "Daft, to_arrow_iter, from Parquet": "cold", "Daft, to_torch_dataloader": "warm",
    "HF datasets": "warm", "HF datasets, 2 workers": "workers", "Mosaic Streaming": "warm",
    "Mosaic Streaming, 2 workers": "workers", "Petastorm": "cold", "Ray Data": "warm",
}
VENV = {"Petastorm": "petastorm", "Mosaic Streaming": "mosaic", "Mosaic Streaming, 2 workers": "mosaic"}
"""The venv under ``benchmarks/.peers/`` of each peer configuration (others: ``main``)."""


def idxlake_runner(table: str, config: dict, bs: int):
    from idxlake.loaders import DeltaIterableDataset

    ds = DeltaIterableDataset(table, split="train", batch_size=bs, columns=("image", "label"),
                              cache_bytes=config["cache"])
    loader = ds.dataloader(num_workers=config["workers"])

    def run(epoch: int) -> int:
        ds.set_epoch(epoch)
        return count(loader)
    return run


def child(name: str, table: str, files: list[str], bs: int, reps: int) -> dict:
    import torch

    torch.set_num_threads(1)
    return measure(idxlake_runner(table, IDXLAKE[name], bs), in_memory(files, bs), reps)


def run_config(name: str, job: dict, peers: Path) -> dict:
    """One configuration in a fresh interpreter: its JSON result, or ``{"error": ...}``."""
    if name in IDXLAKE:
        cmd = [sys.executable, __file__, "--child", json.dumps({"name": name, **job})]
    else:
        python = peers / VENV.get(name, "main") / "bin" / "python"
        if not python.exists():
            return {"error": f"not installed ({python} missing: run bash benchmarks/peers.sh)"}
        cmd = [str(python), "-W", "ignore", str(HERE / "peer_loaders.py"), "--peer", name,
               "--files", json.dumps(job["files"]), "--batch-size", str(job["bs"]), "--reps", str(job["reps"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1800)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(lines[-1])


def report(results: dict[str, dict]) -> None:
    print("\n| configuration | class | samples/s | in-memory limit (same process) | ratio to the limit |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        cls = IDXLAKE[name]["class"] if name in IDXLAKE else PEER_CLASS[name]
        if "error" in r:
            print(f"| {name} | {cls} | - | - | {r['error']} |")
        else:
            print(f"| {name} | {cls} | {r['rate'] / 1e6:.3f} M/s | {r['limit'] / 1e6:.2f} M/s | {r['ratio']:.3f}x |")
    ok = {k: v for k, v in results.items() if "error" not in v}
    peers = {k: v["ratio"] for k, v in ok.items() if k not in IDXLAKE}
    ours = {k: v["ratio"] for k, v in ok.items() if k in IDXLAKE}
    if not peers or not ours:
        return
    print()
    for cls in ("warm", "cold", "workers"):
        mine = {k: v for k, v in ours.items() if IDXLAKE[k]["class"] == cls}
        theirs = {k: v for k, v in peers.items() if PEER_CLASS[k] == cls}
        if mine and theirs:
            (m, mv), (t, tv) = min(mine.items(), key=lambda kv: kv[1]), max(theirs.items(), key=lambda kv: kv[1])
            print(f"{cls}: idxlake's slowest ({m}) / the fastest peer ({t}): {mv / tv:.2f}x")
    (m, mv), (t, tv) = min(ours.items(), key=lambda kv: kv[1]), max(peers.items(), key=lambda kv: kv[1])
    print(f"any class: idxlake's slowest ({m}) / the fastest peer ({t}): {mv / tv:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="measured blocks of 3 epochs per configuration")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--only", nargs="+", default=None, help="configuration names to run")
    parser.add_argument("--peers", default=str(HERE / ".peers"), help="the peers' venvs (benchmarks/peers.sh)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(child(job["name"], job["table"], job["files"], job["bs"], job["reps"])), flush=True)
        return 0
    from deltalake import DeltaTable

    from idxlake import ingest

    names = [n for n in (*IDXLAKE, *PEERS) if not args.only or n in args.only]
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
        table = str(Path(tmp) / "mnist")
        ingest(None, table)
        files = [f for f in DeltaTable(table).file_uris() if "/split=train/" in f]
        job = {"table": table, "files": files, "bs": args.batch_size, "reps": args.reps}
        results: dict[str, dict] = {}
        for name in names:
            start = time.perf_counter()
            results[name] = run_config(name, job, Path(args.peers))
            print(f"  {name}: {results[name]} ({time.perf_counter() - start:.0f} s)", flush=True)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
