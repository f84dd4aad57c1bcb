"""How ABP training and evaluation scale with the data set and with the number of processes.

    python -m bench.scale                         # CPU: N = 1k, 4k, 16k; CUDA: 4k, 16k, 64k
    python -m bench.scale --sizes 1000,4000 --skip-distributed
    python -m bench.scale --quick                 # tiny sizes and generator (the test's run)

1. Data size. N synthetic 64×64 RGB images (smooth seeded patterns, stored as uint8 in a
   memory-mapped `.npy` in a temporary folder, decoded with the prepared data's PIXELS
   encoding), and for each N three runs, each in a fresh child process so that no peak
   carries over from one to the next:
   - train on device: abp.train.ABPTrainer with the data decoded into a float32 tensor held
     where training runs (data_on_device=True);
   - train off device: the trainer given the memory-mapped array (abp.datasets.Stored),
     read and decoded per batch on the host (data_on_device=False, the prefetch thread);
   - evaluate: abp.evaluate.most_probable_latents over the N examples, a fixed batch_size at
     a time, y read per batch from the same memory map.
   The table gives seconds per epoch (a pass over the N examples), seconds per 1k examples
   and its ratio to the smallest N's row (linear in N: 1.0), the same for the CPU time of
   the process (all its threads: less swayed than wall time by other work on a shared
   machine, though caches and memory bandwidth are still shared), and peak memory: host
   peak RSS (ru_maxrss), host peak anonymous memory (RssAnon, sampled every 10 ms: its own
   memory, without the pages of the memory-mapped file it read, which RSS counts and the
   kernel may drop), its ratio and difference to the smallest N's row, the difference per
   added example (KiB; the data are 48 KiB per example as float32), and on CUDA
   torch.cuda.max_memory_allocated. Then whether what is expected holds: time at most
   linear in N (per 1k examples, not above the smallest N's by more than a third); memory
   flat in N apart from the latent bank (off-device training, evaluation; judged from the
   second largest N to the largest, past the one-off growth of the allocator's caches), or
   growing with the data (on-device training). Host memory that grows although nothing is
   kept can be glibc's allocator (the hint printed then says how to tell).
2. Processes. The same training on 1 and on k processes (torchrun --standalone, one
   global batch): gloo and k = 2 on the CPU, NCCL and k = the GPU count with several GPUs.
   The table gives the epoch time and the parallel efficiency t1 / (k·tk). On a machine
   with 2 cores (shared with whatever else runs there) it is low: this part is about the
   multi-process training working, at what cost; tests/abp/test_distributed.py checks that
   it computes what one process does.

Each run is warmed up first (a trainer over a couple of batches, or a first evaluation
batch), so the epoch times leave out one-off costs. On the CPU every process uses one
thread by default (--threads): two threads on two cores shared with other work make each
synchronisation wait for a descheduled thread, and the timings swing tenfold. Needs torch
and numpy (and abp) only.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from abp.datasets import PIXELS, Stored
from abp.distributed import (
    gather_objects,
    join_from_environment,
    launched_world,
    leave,
    process_device,
)
from abp.evaluate import most_probable_latents
from abp.models import ImageGenerator
from abp.train import ABPConfig, ABPTrainer

REPO = Path(__file__).resolve().parents[1]
SHAPE = (3, 64, 64)  # one example: a 64×64 RGB image
DATA_BYTES = math.prod(SHAPE) * 4  # one example as float32 (48 KiB)
CHUNK = 1024  # images drawn per seed: the first n of a larger set are the n-image set
SIGMA, STEP_SIZE = ABPConfig.sigma, ABPConfig.step_size
# What "at most linear in N" allows: the largest N's time per 1k examples at most this
# factor of the smallest N's. Below 1 is linear too, plus a fixed cost per epoch (threads
# started, the epoch's order drawn) that more examples share.
LINEAR = 1 / 0.75
# What "flat" allows beyond the expected per-example memory (allocator and thread-arena
# noise), and the share of the data's size that "grows with the data" must reach.
SLACK_MB = 32.0
GROWS = 0.8
MB = 2**20


@dataclass(frozen=True)
class Preset:
    """The settings a run starts from; each is an option too."""

    sizes: tuple[int, ...]
    latent_dim: int
    widths: tuple[int, ...]
    langevin_steps: int
    batch_size: int
    eval_steps: int
    eval_batch_size: int
    distributed_size: int
    epochs: int = 1


PRESETS = {
    # A few minutes on 2 CPU cores: a small generator, one Langevin step.
    "cpu": Preset((1000, 4000, 16000), 16, (32, 16, 8), 1, 64, 2, 256, 4000),
    # The face generator (d = 100, 4×4×512 → 64×64×3) at the algorithm's l = 10.
    "cuda": Preset((4000, 16000, 64000), 100, (512, 256, 128, 64), 10, 256, 10, 1024, 16000),
    # Seconds: what the test runs.
    "quick": Preset((64, 256), 8, (8,), 1, 32, 1, 64, 128),
}


@dataclass(frozen=True)
class Run:
    name: str
    mode: str  # "train" or "evaluate"
    on_device: bool = False


RUNS = (
    Run("train on device", "train", on_device=True),
    Run("train off device", "train", on_device=False),
    Run("evaluate", "evaluate"),
)


# --- data ------------------------------------------------------------------------------------


def image_chunk(index: int, seed: int = 0) -> torch.Tensor:
    """CHUNK smooth uint8 images (bicubic upsampling of random 4×4 colour grids), the same
    for the same (index, seed) wherever they are drawn."""
    rng = torch.Generator().manual_seed(seed * 100_003 + index)
    coarse = torch.rand((CHUNK, SHAPE[0], 4, 4), generator=rng)
    smooth = F.interpolate(coarse, size=SHAPE[1:], mode="bicubic", align_corners=False)
    return (smooth.clamp(0, 1) * 255).round().to(torch.uint8)


def synthetic_images(n: int) -> torch.Tensor:
    """The first n synthetic images (uint8), in memory."""
    chunks = [image_chunk(i) for i in range(math.ceil(n / CHUNK))]
    return torch.cat(chunks)[:n]


def write_images(path: Path, n: int) -> Path:
    """The first n synthetic images as a uint8 `.npy`, written a chunk at a time."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *SHAPE))
    for i in range(math.ceil(n / CHUNK)):
        rows = slice(i * CHUNK, min(n, (i + 1) * CHUNK))
        array[rows] = image_chunk(i)[: rows.stop - rows.start].numpy()
    array.flush()
    del array
    return path


def open_images(path: Path, n: int) -> Stored:
    """The first n images of the file, memory-mapped (copy on write, as abp.datasets opens
    prepared arrays) and decoded per read with the PIXELS encoding."""
    array = np.load(path, mmap_mode="c", allow_pickle=False)[:n]
    return Stored(torch.from_numpy(array), PIXELS.scale, PIXELS.offset)


def first_rows(source: Stored, n: int) -> Stored:
    return Stored(source.array[:n], source.scale, source.offset)


def decode_all(source: Stored) -> torch.Tensor:
    """Every example as one float32 tensor, decoded a chunk at a time into it (so the peak
    is the data, not the data and decoding temporaries)."""
    data = torch.empty((len(source), *SHAPE))
    for ids in torch.arange(len(source)).split(CHUNK):
        data[ids] = source.rows(ids)
    return data


class DecodedRows:
    """The examples of a memory-mapped source as most_probable_latents reads y: len() and
    y[index], which decodes only those rows (the whole y is never in memory)."""

    def __init__(self, source: Stored):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, ids: torch.Tensor) -> torch.Tensor:
        return self.source.rows(ids)


# --- measuring, in a child process ------------------------------------------------------------


class AnonymousPeak:
    """The peak of this process's anonymous resident memory (RssAnon of /proc/self/status),
    sampled on a thread; None where there is no such file."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak = self.read() or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def read() -> int | None:
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.read() or 0)

    def __enter__(self) -> AnonymousPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read() or 0)

    def mb(self) -> float | None:
        return self.peak / MB if self.read() is not None else None


def peak_rss_mb() -> float:
    """This process's peak resident set size (KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024


def build_generator(spec: dict[str, Any]) -> ImageGenerator:
    torch.manual_seed(spec.get("seed", 0))
    return ImageGenerator(
        latent_dim=spec["latent_dim"],
        image_size=SHAPE[1],
        channels=SHAPE[0],
        widths=tuple(spec["widths"]),
    )


def abp_config(spec: dict[str, Any]) -> ABPConfig:
    return ABPConfig(
        sigma=SIGMA,
        step_size=STEP_SIZE,
        langevin_steps=spec["langevin_steps"],
        batch_size=spec["batch_size"],
        seed=0,
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh_cuda_peak(device: torch.device) -> None:
    """Start counting the device's peak from now (what a warm-up left behind freed)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def train_run(spec: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Epochs of training on the first n images, the data on the device or read per batch."""
    source = open_images(Path(spec["path"]), spec["n"])
    on_device = spec["on_device"]
    config = abp_config(spec)
    generator = build_generator(spec)
    warm = min(spec["n"], 2 * spec["batch_size"])
    if on_device:
        data: torch.Tensor | Stored = decode_all(source)
        assert isinstance(data, torch.Tensor)
        warm_data: torch.Tensor | Stored = data[:warm]
    else:
        data = source
        warm_data = first_rows(source, warm)
    ABPTrainer(
        copy.deepcopy(generator), warm_data, config, device=device, data_on_device=on_device
    ).train_epoch()
    fresh_cuda_peak(device)
    trainer = ABPTrainer(generator, data, config, device=device, data_on_device=on_device)
    del data, warm_data  # on CUDA the trainer holds its copy on the device
    assert trainer.data_on_device == on_device
    history, cpu_seconds = [], []
    for _ in range(spec["epochs"]):
        cpu_started = time.process_time()
        history.append(trainer.train_epoch())
        cpu_seconds.append(time.process_time() - cpu_started)
    return {
        "seconds": [h["seconds"] for h in history],
        "cpu_seconds": cpu_seconds,
        "energy": history[-1]["energy"],
    }


def evaluate_run(spec: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """most_probable_latents over the first n images from z = 0, a batch at a time."""
    source = open_images(Path(spec["path"]), spec["n"])
    generator = build_generator(spec).to(device)

    def descend(n: int) -> torch.Tensor:
        rows = DecodedRows(first_rows(source, n))
        z, _ = most_probable_latents(
            generator,
            cast(torch.Tensor, rows),  # only len() and rows[index] are used (its docstring)
            torch.zeros((n, *generator.latent_shape)),
            sigma=SIGMA,
            step_size=STEP_SIZE,
            max_steps=spec["eval_steps"],
            batch_size=spec["eval_batch_size"],
            device=device,
        )
        return z

    descend(min(spec["n"], spec["eval_batch_size"]))  # warm-up
    fresh_cuda_peak(device)
    seconds, cpu_seconds = [], []
    for _ in range(spec["epochs"]):
        synchronize(device)
        started, cpu_started = time.perf_counter(), time.process_time()
        z = descend(spec["n"])
        synchronize(device)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
    assert bool(torch.isfinite(z).all())
    return {"seconds": seconds, "cpu_seconds": cpu_seconds}


def distributed_run(spec: dict[str, Any]) -> dict[str, Any] | None:
    """One rank of the process comparison (a world of one without torchrun): epochs of
    training on n in-memory images; rank 0 returns every epoch's slowest rank's seconds."""
    world = launched_world()
    device = process_device(world) if spec["device"] == "cuda" else torch.device("cpu")
    world = join_from_environment(device)
    data = decode_all(Stored(synthetic_images(spec["n"]), PIXELS.scale, PIXELS.offset))
    config = abp_config(spec)
    generator = build_generator(spec)
    warm = min(spec["n"], 2 * spec["batch_size"])
    ABPTrainer(copy.deepcopy(generator), data[:warm], config, device=device).train_epoch()
    trainer = ABPTrainer(generator, data, config, device=device)
    seconds, energy = [], math.nan
    for _ in range(spec["epochs"]):
        # Each epoch ends in collectives (the divergence verdict, the sums): the ranks
        # start the next one together.
        stats = trainer.train_epoch()
        seconds.append(max(gather_objects(stats["seconds"], world)))
        energy = stats["energy"]
    leave()
    if not world.is_main:
        return None
    return {"seconds": seconds, "energy": energy, "world_size": world.size}


def child(spec: dict[str, Any]) -> None:
    """What one child process measures; prints `RESULT {json}` (rank 0 only under torchrun)."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    with AnonymousPeak() as anonymous:
        if spec["mode"] == "distributed":
            result = distributed_run(spec)
        else:
            device = torch.device(spec["device"])
            run = train_run if spec["mode"] == "train" else evaluate_run
            result = run(spec, device)
            if device.type == "cuda":
                result["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / MB
    if result is None:
        return
    result["peak_rss_mb"] = peak_rss_mb()
    result["peak_anon_mb"] = anonymous.mb()
    print("RESULT " + json.dumps(result), flush=True)


# --- the parent: launching children, the tables ------------------------------------------------


def launch(spec: dict[str, Any], nproc: int = 1) -> dict[str, Any]:
    """Run `spec` in a fresh child process (under torchrun for nproc > 1); its result."""
    module = ["-m", "bench.scale", "--child", json.dumps(spec)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    if spec.get("threads"):
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    # torchrun's agent would leave its log folder (torchelastic_*) in /tmp: give it this one.
    with tempfile.TemporaryDirectory(prefix="bench-torchrun-") as logs:
        command = [sys.executable, *module]
        if nproc > 1:
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={nproc}",
                f"--log-dir={logs}",
                *module,
            ]
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not results:
        raise RuntimeError(
            f"the child {spec['mode']} run failed (exit {done.returncode}):\n"
            + done.stdout[-3000:]
            + done.stderr[-3000:]
        )
    return cast(dict[str, Any], json.loads(results[-1].removeprefix("RESULT ")))


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def label(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@dataclass
class Row:
    n: int
    run: Run
    seconds: float  # per epoch
    cpu_seconds: float  # per epoch, of every thread of the process
    rss_mb: float
    anon_mb: float | None
    cuda_mb: float | None

    @property
    def per_1k(self) -> float:
        return self.seconds / self.n * 1000

    @property
    def cpu_per_1k(self) -> float:
        return self.cpu_seconds / self.n * 1000


def per_example_bytes(run: Run, latent_numel: int) -> int:
    """What a run is expected to hold per example besides the data: the latent bank (4 bytes
    a number) and the epoch's order and batch ids (int64) for training; the starting and
    found latents and the steps for evaluation."""
    if run.mode == "train":
        return 4 * latent_numel + 16
    return 8 * latent_numel + 16


def size_part(
    args: argparse.Namespace, preset: Preset, device: torch.device, folder: Path
) -> list[Row]:
    sizes = sorted(preset.sizes)
    path = write_images(folder / "images.npy", sizes[-1])
    base_spec = {
        "path": str(path),
        "device": str(device),
        "threads": args.threads,
        "epochs": preset.epochs,
        **{k: v for k, v in asdict(preset).items() if k not in ("sizes", "epochs")},
    }
    first = sizes[0]
    cuda = device.type == "cuda"
    times = "×" + label(first)  # a ratio to the smallest N's row
    header = (
        f"{'N':>6} {'run':<17} {'s/epoch':>8} {'s/1k ex':>8} {times:>6} {'CPU s/1k':>8} "
        f"{times:>6} {'RSS MB':>7} {'anon MB':>8} {times:>6} {'Δanon MB':>9} {'KiB/ex':>7}"
    )
    if cuda:
        header += f" {'CUDA MB':>8} {times:>6} {'KiB/ex':>7}"
    print(header, flush=True)
    rows: list[Row] = []
    for n in sizes:
        for run in RUNS:
            spec = {**base_spec, "n": n, "mode": run.mode, "on_device": run.on_device}
            result = launch(spec)
            row = Row(
                n,
                run,
                mean(result["seconds"]),
                mean(result["cpu_seconds"]),
                result["peak_rss_mb"],
                result["peak_anon_mb"],
                result.get("cuda_peak_mb"),
            )
            rows.append(row)
            base = next(r for r in rows if r.run == run and r.n == first)
            line = (
                f"{n:>6} {run.name:<17} {row.seconds:>8.2f} {row.per_1k:>8.3f} "
                f"{row.per_1k / base.per_1k:>5.2f}× {row.cpu_per_1k:>8.3f} "
                f"{row.cpu_per_1k / base.cpu_per_1k:>5.2f}× {row.rss_mb:>7.0f} "
                f"{fmt(row.anon_mb, '>8.0f')} {ratio(row.anon_mb, base.anon_mb)} "
                f"{delta(row.anon_mb, base.anon_mb)} {slope(row, base, row.anon_mb, base.anon_mb)}"
            )
            if cuda:
                line += (
                    f" {fmt(row.cuda_mb, '>8.0f')} {ratio(row.cuda_mb, base.cuda_mb)} "
                    f"{slope(row, base, row.cuda_mb, base.cuda_mb)}"
                )
            print(line, flush=True)
    return rows


def ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:>5.2f}×" if value is not None and base else f"{'-':>6}"


def delta(value: float | None, base: float | None) -> str:
    return f"{value - base:>+9.1f}" if value is not None and base is not None else f"{'-':>9}"


def slope(row: Row, base: Row, value: float | None, base_value: float | None) -> str:
    """Memory per added example (KiB) from the smallest N's row to this one."""
    if value is None or base_value is None or row.n == base.n:
        return f"{'-':>7}"
    return f"{(value - base_value) * 1024 / (row.n - base.n):>7.2f}"


def judge_sizes(rows: list[Row], latent_numel: int, device: torch.device) -> None:
    """Which expectation holds and which does not, with the numbers it is judged on."""
    first, last = min(r.n for r in rows), max(r.n for r in rows)

    def row(run: Run, n: int) -> Row:
        return next(r for r in rows if r.run == run and r.n == n)

    on, off = RUNS[0], RUNS[1]
    ratios = ", ".join(
        f"N={n} {row(off, n).seconds / row(on, n).seconds:.2f}×"
        for n in sorted({r.n for r in rows})
    )
    print(f"off-device / on-device training time per epoch: {ratios}")
    if first == last:
        print("one size only: nothing to compare across N")
        return
    print(
        "expectations (memory judged on the anonymous peak; RSS also counts the pages of the "
        "memory-mapped file a run read, page cache the kernel may drop):"
    )
    for run in RUNS:
        r = row(run, last).per_1k / row(run, first).per_1k
        cpu = row(run, last).cpu_per_1k / row(run, first).cpu_per_1k
        verdict = "holds" if r <= LINEAR else "does NOT hold"
        shared = " (a fixed cost per epoch, shared by more examples)" if r < 1 / LINEAR else ""
        print(
            f"  time at most linear in N, {run.name}: per 1k examples N={last} takes "
            f"{r:.2f}× N={first}{shared} (allowed up to {LINEAR:.2f}×; CPU time {cpu:.2f}×): "
            f"{verdict}"
        )
    added = last - first
    data_mb = added * DATA_BYTES / MB
    # Flat is judged from the second largest N to the largest: the smallest N's run can end
    # before the allocator's caches reach their steady size (a one-off of a few batches'
    # buffers, the same at every larger N), while anything kept per example still shows,
    # over (largest - second largest) examples.
    sizes = sorted({r.n for r in rows})
    flat_from = sizes[-2]
    flat_added = last - flat_from
    memories: list[tuple[str, Callable[[Row], float | None]]] = [("host", lambda r: r.anon_mb)]
    if device.type == "cuda":
        memories.append(("device", lambda r: r.cuda_mb))
    allocator = False
    for where, measure in memories:
        for run in RUNS:
            small, large = measure(row(run, first)), measure(row(run, last))
            if small is None or large is None:
                print(f"  {where} memory, {run.name}: not measured here")
                continue
            grown = large - small
            if run.on_device:
                verdict = "holds" if grown >= GROWS * data_mb else "does NOT hold"
                print(
                    f"  {where} memory grows with the data, {run.name}: "
                    f"{grown:+.1f} MB from N={first} to {last}, the data "
                    f"{data_mb:.1f} MB as float32 (at least {GROWS:.0%} of it): {verdict}"
                )
                continue
            middle = measure(row(run, flat_from))
            assert middle is not None
            flat_grown = large - middle
            # At most: on CUDA part of it is on the host, part on the device.
            expected = flat_added * per_example_bytes(run, latent_numel) / MB
            what = "the latent bank" if run.mode == "train" else "the latents"
            verdict = "holds" if flat_grown <= expected + SLACK_MB else "does NOT hold"
            allocator |= where == "host" and verdict != "holds"
            print(
                f"  {where} memory flat in N apart from {what}, {run.name}: "
                f"{flat_grown:+.1f} MB from N={flat_from} to {last} "
                f"({(flat_grown * MB / 1024) / flat_added:.2f} KiB an example; "
                f"{grown:+.1f} MB from N={first}), expected at most {expected:.1f} MB "
                f"(+{SLACK_MB:.0f} MB allowed; the data are "
                f"{flat_added * DATA_BYTES / MB:.1f} MB): {verdict}"
            )
    if allocator and sys.platform.startswith("linux"):
        print(
            "  (host memory can grow without anything being kept: glibc raises its mmap "
            "threshold to the size of freed blocks, then serves such blocks from a heap that "
            "small long-lived tensors keep from shrinking; MALLOC_MMAP_THRESHOLD_=131072 in "
            "the environment fixes the threshold and tells the two apart)"
        )


def distributed_part(args: argparse.Namespace, preset: Preset, device: torch.device) -> float:
    """1 against k processes of the same training; returns the parallel efficiency."""
    k = args.nproc
    backend = "nccl" if device.type == "cuda" else "gloo"
    settings = {key: v for key, v in asdict(preset).items() if key not in ("sizes", "epochs")}
    spec = {
        "mode": "distributed",
        "device": device.type,
        "threads": args.threads,
        "n": preset.distributed_size,
        "epochs": preset.epochs,
        **settings,
    }
    print(
        f"{'processes':>9} {'backend':<7} {'N':>6} {'batch':>5} {'s/epoch':>8} {'ex/s':>8} "
        f"{'speedup':>8} {'efficiency':>10} {'energy/ex':>10} {'RSS MB (rank 0)':>15}",
        flush=True,
    )
    results = {}
    for nproc in (1, k):
        result = launch(spec, nproc)
        assert result["world_size"] == nproc, result
        results[nproc] = result
        seconds = mean(result["seconds"])
        one = mean(results[1]["seconds"])
        print(
            f"{nproc:>9} {backend if nproc > 1 else '-':<7} {spec['n']:>6} "
            f"{spec['batch_size']:>5} {seconds:>8.2f} {spec['n'] / seconds:>8.0f} "
            f"{one / seconds:>7.2f}× {one / (nproc * seconds):>10.0%} "
            f"{result['energy']:>10.1f} {result['peak_rss_mb']:>15.0f}",
            flush=True,
        )
    t1, tk = mean(results[1]["seconds"]), mean(results[k]["seconds"])
    efficiency = t1 / (k * tk)
    energies = results[1]["energy"], results[k]["energy"]
    where = (
        f"{torch.cuda.device_count()} GPUs"
        if device.type == "cuda"
        else f"{os.cpu_count()} CPU cores, {args.threads or torch.get_num_threads()} thread(s) "
        "a process"
    )
    print(
        f"parallel efficiency t1/({k}·t{k}) = {efficiency:.2f} on {where}; the same global "
        f"batch of {spec['batch_size']}; energy per example after the epoch "
        f"{energies[0]:.1f} on 1 process, {energies[1]:.1f} on {k} "
        f"({abs(energies[1] - energies[0]) / abs(energies[0]):.1%} apart: the ranks draw "
        "other Langevin noise, so the runs are alike, not equal)"
    )
    return efficiency


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--sizes",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        help="data set sizes N, comma-separated (default: 1000,4000,16000 on the CPU; "
        "4000,16000,64000 on CUDA; 64,256 with --quick)",
    )
    parser.add_argument("--langevin-steps", type=int, help="l (default: 1 on the CPU, 10 on CUDA)")
    parser.add_argument("--epochs", type=int, help="timed epochs per run (default: 1)")
    parser.add_argument("--batch-size", type=int, help="the (global) learning batch")
    parser.add_argument("--eval-steps", type=int, help="descent steps of the evaluation")
    parser.add_argument("--eval-batch-size", type=int, help="examples descended at once")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads per process (default: 1 on the CPU, torch's own on CUDA)",
    )
    parser.add_argument("--skip-distributed", action="store_true", help="no process comparison")
    parser.add_argument(
        "--nproc",
        type=int,
        help="processes to compare with one (default: the GPU count with several GPUs, "
        "else 2 on the CPU)",
    )
    parser.add_argument("--distributed-size", type=int, help="examples of the process comparison")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and generator (tests)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return
    started = time.perf_counter()
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    preset = PRESETS["quick" if args.quick else "cuda" if on_cuda else "cpu"]
    overrides = {
        "sizes": args.sizes,
        "langevin_steps": args.langevin_steps,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "eval_steps": args.eval_steps,
        "eval_batch_size": args.eval_batch_size,
        "distributed_size": args.distributed_size,
    }
    preset = replace(preset, **{k: v for k, v in overrides.items() if v is not None})
    if args.threads is None and not on_cuda:
        args.threads = 1
    name = torch.cuda.get_device_name(device) if on_cuda else "CPU"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"device: {name}, {os.cpu_count()} CPU cores (load average {load}), "
        f"{args.threads or torch.get_num_threads()} thread(s) a process, torch {torch.__version__}"
    )
    print(
        f"generator: ImageGenerator(latent_dim={preset.latent_dim}, image_size=64, channels=3, "
        f"widths={preset.widths}); l={preset.langevin_steps}, σ={SIGMA}, s={STEP_SIZE}, "
        f"batch {preset.batch_size}, {preset.epochs} timed epoch(s) after a warm-up; "
        f"evaluation: {preset.eval_steps} descent steps, batch {preset.eval_batch_size}"
    )
    print(
        f"\n1. data size N (each run in a fresh process; ×{label(min(preset.sizes))}: "
        "ratio to the smallest N's row)"
    )
    with tempfile.TemporaryDirectory(prefix="abp-scale-") as folder:
        rows = size_part(args, preset, device, Path(folder))
    judge_sizes(rows, preset.latent_dim, device)
    efficiency = None
    if not args.skip_distributed:
        gpus = torch.cuda.device_count() if on_cuda else 0
        where = device
        if on_cuda and gpus < 2:
            print("\n2. processes: one GPU here, nothing to share; 1 against 2 on the CPU (gloo)")
            where = torch.device("cpu")
            preset = replace(
                PRESETS["quick" if args.quick else "cpu"],
                **{k: v for k, v in overrides.items() if v is not None},
            )
            args.threads = args.threads or 1
        else:
            print(f"\n2. processes: 1 against k on {where.type} ({'nccl' if on_cuda else 'gloo'})")
        args.nproc = args.nproc or (gpus if where.type == "cuda" else 2)
        efficiency = distributed_part(args, preset, where)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\ntook {time.perf_counter() - started:.0f} s (load average at the end {load})")
    if efficiency is not None:
        print(f"parallel_efficiency={efficiency:.2f}")


if __name__ == "__main__":
    main()
