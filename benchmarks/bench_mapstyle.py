"""Map-style throughput and memory: ``idxlake.MNIST`` vs the seed's hand-rolled ``Dataset``, same transforms.

Usage::

    .venv/bin/python benchmarks/bench_mapstyle.py [--reps 5] [--workers 0 2] [--json out.json]

Every dataset goes through ``DataLoader(shuffle=True, batch_size=64)`` with the SAME transform
object, ``Compose([ToTensor(), Normalize((0.1307,), (0.3081,))])``, written to do what torchvision
v1's do per call (torchvision itself does not import beside the CPU torch wheel this project pins);
``--transforms minimal`` makes ``Normalize`` a bare ``(x - mean) / std``:

* ``hand-rolled``: the seed's ``MNISTFromGzip(root, train, transform)`` (README "Coming from
  torchvision"): gzip + ``np.frombuffer`` of the bundled files, a float32 copy of all images scaled
  to [0, 1] kept in memory; ``__getitem__`` returns ``transform(images[i]), int(labels[i])``;
* ``hand-rolled uint8``: the same Dataset keeping the uint8 arrays (``bench_loader.py``'s
  hand-rolled baseline): ``ToTensor`` gets a uint8 ``HxW`` array and scales it per sample;
* ``torchvision-style MNIST``: ``torchvision.datasets.MNIST.__getitem__``'s own code over the same
  data (``self.data`` a uint8 tensor ``[N, 28, 28]``, ``self.targets`` int64;
  ``Image.fromarray(img.numpy(), mode="L")`` per sample, ``int(self.targets[index])``): the PIL
  baseline for ``idxlake.MNIST``'s default ``image_type="pil"``;
* ``idxlake.MNIST``: ``idxlake.MNIST(table, train=True, transform=...)`` over the real MNIST table:
  one uint8 buffer decoded from the Delta table; each sample is a PIL image (mode L) as
  torchvision's MNIST yields; ``numpy``: ``image_type="numpy"`` (a uint8 ``HxW`` array, which
  ``ToTensor`` scales); ``float32``: ``image_type="float32"`` (the seed's per-sample object, a
  float32 ``HxW`` array in [0, 1], made per batch from the uint8 buffer).
  The DataLoader fetches idxlake's samples through ``__getitems__`` (one call per batch), the
  seed's through ``__getitem__``, each as torch does by default.

Samples/s is the median over ``--reps`` shuffled epochs of the train split (60000 rows), the
datasets interleaved epoch by epoch in one process so machine noise hits both alike, for each
``--workers`` count (forked workers; the workers are not persistent, as in the seed's loop). Peak RSS
is measured in a fresh subprocess per configuration (construction + one epoch): the main process's
``VmHWM`` and the largest worker's ``ru_maxrss`` (which counts pages shared with the parent); with
workers, also the largest worker's private memory (USS) after a full epoch: what a worker costs
beyond what it shares.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loader import _mnist_arrays, _peak_rss_mb  # the existing hand-rolled baseline's reader

KINDS = ("hand-rolled", "hand-rolled uint8", "torchvision-style MNIST", "idxlake.MNIST", "idxlake.MNIST numpy",
         "idxlake.MNIST float32")
IMAGE_TYPES = {"idxlake.MNIST": "pil", "idxlake.MNIST numpy": "numpy", "idxlake.MNIST float32": "float32"}


class ToTensor:
    """torchvision v1 ``ToTensor`` (``functional.to_tensor``), step by step: a PIL image through
    ``np.array(pic, copy=True)``, view ``[H, W, C]``, permute, contiguous; an ``HxW[xC]`` array
    transposed to ``[C, H, W]``, contiguous; a uint8 result converted to float32 and divided by 255."""

    def __call__(self, pic: Any) -> Any:
        import numpy as np
        import torch

        if isinstance(pic, np.ndarray):
            if pic.ndim == 2:
                pic = pic[:, :, None]
            img = torch.from_numpy(pic.transpose((2, 0, 1))).contiguous()
        else:
            img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
            img = img.view(pic.size[1], pic.size[0], len(pic.getbands())).permute((2, 0, 1)).contiguous()
        if isinstance(img, torch.ByteTensor):
            return img.to(dtype=torch.float32).div(255)
        return img


class Normalize:
    """torchvision v1 ``Normalize`` (``_functional_tensor.normalize``, not in place): checks, clone,
    mean and std as tensors, a zero-std check, ``sub_`` and ``div_``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = list(mean), list(std)

    def __call__(self, tensor: Any) -> Any:
        import torch

        if not tensor.is_floating_point() or tensor.ndim < 3:
            raise TypeError(f"expected a float tensor image [..., C, H, W], got {tensor.dtype} {tuple(tensor.shape)}")
        tensor = tensor.clone()
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device)
        std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device)
        if (std == 0).any():
            raise ValueError("std evaluated to zero")
        return tensor.sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))


class MinimalNormalize:
    """A bare ``(tensor - mean) / std`` (``--transforms minimal``): the least per-sample work."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        import torch

        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, tensor: Any) -> Any:
        return (tensor - self.mean) / self.std


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = transforms

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x


TRANSFORMS = {
    "torchvision": Compose([ToTensor(), Normalize((0.1307,), (0.3081,))]),
    "minimal": Compose([ToTensor(), MinimalNormalize((0.1307,), (0.3081,))]),
}
TRANSFORM = TRANSFORMS["torchvision"]


def make_dataset(kind: str, table: str, transform: Callable[[Any], Any] = TRANSFORM) -> Any:
    """The dataset of ``kind`` over the bundled train split, with ``transform``."""
    import numpy as np
    from torch.utils.data import Dataset

    if kind.startswith("hand-rolled"):
        from idxlake.pipeline.ingest.sources import bundled_mnist

        class MNISTFromGzip(Dataset):
            """The seed's Dataset (README "Coming from torchvision"), train split."""

            def __init__(self, root: Path, train: bool, transform: Callable[[Any], Any] | None) -> None:
                images, labels = _mnist_arrays(root)  # gzip + np.frombuffer of the bundled .gz files
                # the seed's float32 copy of everything, or (uint8) bench_loader's baseline keeping the bytes
                self.images = images if kind.endswith("uint8") else images.astype(np.float32) / 255
                self.labels = labels
                self.transform = transform

            def __len__(self) -> int:
                return len(self.labels)

            def __getitem__(self, i: int) -> tuple[Any, int]:
                x = self.images[i]
                if self.transform:
                    x = self.transform(x)
                return x, int(self.labels[i])

        return MNISTFromGzip(bundled_mnist(), True, transform)
    if kind == "torchvision-style MNIST":
        return TorchvisionStyleMNIST(transform)
    import idxlake

    return idxlake.MNIST(table, train=True, transform=transform, image_type=IMAGE_TYPES[kind])


class TorchvisionStyleMNIST:
    """``torchvision.datasets.MNIST``'s ``__getitem__`` and ``__len__`` (torchvision 0.2x), over the bundled
    train split held as it holds it: ``data`` uint8 ``[N, 28, 28]`` and ``targets`` int64 tensors."""

    def __init__(self, transform: Callable[[Any], Any] | None) -> None:
        import torch

        from idxlake.pipeline.ingest.sources import bundled_mnist

        images, labels = _mnist_arrays(bundled_mnist())
        self.data = torch.from_numpy(images.copy())
        self.targets = torch.from_numpy(labels.astype("int64"))
        self.transform, self.target_transform = transform, None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        from PIL import Image

        img, target = self.data[index], int(self.targets[index])
        img = Image.fromarray(img.numpy(), mode="L")
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


def one_epoch(ds: Any, workers: int) -> int:
    from torch.utils.data import DataLoader

    return sum(len(y) for _, y in DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers))


def _uss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return sum(int(line.split()[1]) for line in text.splitlines()
               if line.startswith(("Private_Clean", "Private_Dirty"))) / 1024


def peak_rss(kind: str, table: str, workers: int) -> dict[str, float]:
    """Child mode: build ``kind``, run one epoch; peak RSS of this process and of its workers."""
    from torch.utils.data import DataLoader

    ds = make_dataset(kind, table)
    uss = 0.0
    if workers:
        loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers, persistent_workers=True)
        it = iter(loader)
        for _ in it:
            pass
        uss = max(_uss_mb(w.pid) for w in it._workers)  # still alive (persistent): after a full epoch
        del it, loader
    else:
        one_epoch(ds, 0)
    import gc

    gc.collect()
    me, kids = _peak_rss_mb()
    return {"rss_mb": me, "worker_rss_mb": kids if workers else 0.0, "worker_uss_mb": uss}


def throughput(table: str, workers: int, reps: int, transform: Callable[[Any], Any]) -> dict[str, float]:
    """Median samples/s per kind, the kinds interleaved epoch by epoch (first epoch: warm-up)."""
    datasets = {kind: make_dataset(kind, table, transform) for kind in KINDS}
    rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for rep in range(reps + 1):
        for kind, ds in datasets.items():
            start = time.perf_counter()
            n = one_epoch(ds, workers)
            if rep:
                rates[kind].append(n / (time.perf_counter() - start))
    return {kind: statistics.median(r) for kind, r in rates.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="measured epochs per point (median)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--transforms", choices=sorted(TRANSFORMS), default="torchvision",
                        help="torchvision: ToTensor and Normalize doing torchvision's per-call work (default); "
                             "minimal: Normalize as a bare (x - mean) / std")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--rss", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # the seed's uint8 arrays are np.frombuffer over bytes (read-only): torch warns once about it, as in the seed
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    if args.rss:
        job = json.loads(args.rss)
        print(json.dumps(peak_rss(job["kind"], job["table"], job["workers"])))
        return 0
    import idxlake

    results: dict[str, Any] = {"cpus": os.cpu_count(), "load": os.getloadavg()[0], "transforms": args.transforms,
                               "rates": {}, "rss": {}}
    with tempfile.TemporaryDirectory(prefix="bench_mapstyle_") as tmp:
        table = str(Path(tmp) / "mnist")
        idxlake.ingest(None, table)
        for workers in args.workers:
            for kind in () if args.no_rss else KINDS:
                job = json.dumps({"kind": kind, "table": table, "workers": workers})
                proc = subprocess.run([sys.executable, __file__, "--rss", job], capture_output=True, text=True,
                                      check=False)
                if proc.returncode:
                    print(f"{kind}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                    return 1
                results["rss"][f"{kind}, {workers} workers"] = json.loads(proc.stdout.strip().splitlines()[-1])
            results["rates"][str(workers)] = throughput(table, workers, args.reps, TRANSFORMS[args.transforms])
            print(f"  {workers} workers: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in
                                                      results["rates"][str(workers)].items()), flush=True)
    results["load_end"] = os.getloadavg()[0]
    print(f"\n{results['cpus']} CPUs, load average {results['load']:.1f} at the start, {results['load_end']:.1f} "
          f"at the end (a shared machine); transforms: {args.transforms}")
    print("\n| workers | dataset | samples/s | vs hand-rolled (float32) | vs torchvision-style (PIL) | peak RSS MB "
          "| worker peak RSS MB | worker USS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for workers in args.workers:
        rates = results["rates"][str(workers)]
        for kind in KINDS:
            nan = float("nan")
            rss = results["rss"].get(f"{kind}, {workers} workers",
                                     {"rss_mb": nan, "worker_rss_mb": nan, "worker_uss_mb": nan})
            kids = f"{rss['worker_rss_mb']:.0f}" if workers else "-"
            uss = f"{rss['worker_uss_mb']:.0f}" if workers else "-"
            print(f"| {workers} | {kind} | {rates[kind]:,.0f} | {rates[kind] / rates['hand-rolled']:.2f}x "
                  f"| {rates[kind] / rates['torchvision-style MNIST']:.2f}x "
                  f"| {rss['rss_mb']:.0f} | {kids} | {uss} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
