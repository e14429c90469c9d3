"""Shared benchmark scaffolding, stdlib + torch only (imported by the drivers and by both sides' venvs).

- Step clock: both sides of a training benchmark are timed the same way, without reaching into
  either trainer: torch's global optimizer-step hook
  (``torch.optim.optimizer.register_optimizer_step_post_hook``) stamps the wall clock after every
  optimiser step of any optimiser in the process. Step k's time is ``stamp[k] - stamp[k-1]``:
  everything the trainer does between two updates (the base-model gradients for the next example,
  the encoder-decoder forward/backward, bookkeeping). Evaluation is kept out of the timed window by
  the caller (evaluation only runs before step 1 and after the last step). Only the GRADIEND
  encoder-decoder is optimised by either trainer, so every stamp is a step. The process CPU time
  (user+sys, all threads) is stamped too: on a shared machine it is the less load-sensitive of the two.
- One timed call: ``Window`` (wall/CPU time and peak RSS of a ``with`` block, after ``release_memory``
  and ``reset_peak_rss``), ``CallStamps`` (stamps of every call of a wrapped function inside it) and
  ``touch`` (weights made resident first).
- Results: ``write_result`` (a side's JSON), ``md_table`` + ``write_summary`` (a driver's markdown
  table on stdout and its JSON summary), both written atomically (temp file + rename).
- ``torchrun`` configurations ``PxT`` of the scale-out benchmarks (``dist_parser``, ``dist_configs``,
  ``torchrun``).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float:
    """Current resident set size (VmRSS) in MiB."""
    kib = _status_kib("VmRSS")
    return round(kib / 1024, 1) if kib is not None else float("nan")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (VmHWM, = ru_maxrss on Linux) in MiB."""
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / 1024, 1)


class StepClock:
    """Wall-clock stamp and RSS after every optimiser step in the process.

    A background thread also samples VmRSS every ``sample_s`` seconds and keeps the largest value per
    phase: ``setup`` (before the first step ends: model, data, pre-pruning, initial evaluation),
    ``steps`` (until ``expected_steps`` steps are done) and ``final`` (evaluation, saving). Sampling
    can miss a short spike; the process peak (VmHWM) cannot.
    """

    def __init__(self, expected_steps: int, sample_s: float = 0.2) -> None:
        self.stamps: list[float] = []
        self.cpu: list[float] = []
        self.rss: list[float] = []
        self.threads_at_first_step: int | None = None
        self.expected_steps = expected_steps
        self.phase_peak_mib = {"setup": 0.0, "steps": 0.0, "final": 0.0}
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, args=(sample_s,), daemon=True)
        self._sampler.start()
        self._handle = register_optimizer_step_post_hook(self._hook)

    def _phase(self) -> str:
        n = len(self.stamps)
        return "setup" if n == 0 else "steps" if n < self.expected_steps else "final"

    def _sample(self, every: float) -> None:
        while not self._stop.wait(every):
            phase, value = self._phase(), rss_mib()
            if value > self.phase_peak_mib[phase]:
                self.phase_peak_mib[phase] = value

    def _hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.stamps.append(time.perf_counter())
        self.cpu.append(time.process_time())
        self.rss.append(rss_mib())
        if self.threads_at_first_step is None:
            self.threads_at_first_step = torch.get_num_threads()

    def close(self) -> None:
        self._handle.remove()
        self._stop.set()
        self._sampler.join()

    def summary(self, warmup: int, t_train_start: float) -> dict[str, Any]:
        """Per-step times of steps ``warmup+1 ..`` (1-based), and setup time up to step 1's end."""
        times = [b - a for a, b in zip(self.stamps[warmup - 1 :], self.stamps[warmup:])] if warmup >= 1 else []
        cpu = [b - a for a, b in zip(self.cpu[warmup - 1 :], self.cpu[warmup:])] if warmup >= 1 else []
        out: dict[str, Any] = {
            "steps_done": len(self.stamps),
            "warmup_steps": warmup,
            "timed_steps": len(times),
            "step_times_s": [round(t, 3) for t in times],
            "to_first_step_s": round(self.stamps[0] - t_train_start, 2) if self.stamps else None,
            "threads_at_first_step": self.threads_at_first_step,
            "rss_during_steps_mib": max(self.rss[warmup - 1 :]) if len(self.rss) >= warmup and warmup >= 1 else None,
            "sampled_peak_by_phase_mib": dict(self.phase_peak_mib),
        }
        if times:
            out.update(step_median_s=round(statistics.median(times), 3), step_mean_s=round(statistics.fmean(times), 3),
                       step_min_s=round(min(times), 3), step_max_s=round(max(times), 3),
                       step_cpu_times_s=[round(t, 3) for t in cpu], step_cpu_median_s=round(statistics.median(cpu), 3))
        return out


def setup_threads(threads: int) -> None:
    torch.set_num_threads(threads)


LOAD_AT_IMPORT = os.getloadavg()


def machine_info() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "loadavg_at_start": LOAD_AT_IMPORT}


# -------------------------------------------------------------------------------------------------
# one timed call
# -------------------------------------------------------------------------------------------------
class CallStamps:
    """Start/end wall clock and process CPU time of every call of a wrapped function.

    ``info(*args, **kwargs)`` may add fields to each call's record (e.g. how many rows it scored).
    """

    def __init__(self, info: Callable[..., dict[str, Any]] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self._info = info

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn(*args, **kwargs)
            rec = {"start": t0, "end": time.perf_counter(), "cpu": time.process_time() - c0}
            if self._info is not None:
                rec.update(self._info(*args, **kwargs))
            self.calls.append(rec)
            return out

        return timed


def release_memory() -> None:
    """Free what earlier work left behind (garbage, glibc's cached free heap) before measuring."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def touch(tensors: Any) -> None:
    """Read every tensor once, so weights a checkpoint load left mapped on disk are resident before timing."""
    for t in tensors:
        if t.numel():
            t.detach().sum().item()


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Window:
    """Wall and process CPU time and peak RSS of one ``with`` block (the timed call of a side).

    On entry, garbage and glibc's cached free heap are released and VmHWM is reset to the current RSS,
    so ``rss_before`` is what the block starts from and ``peak`` the peak DURING it (``None`` when the
    kernel cannot reset it). ``summary()`` gives the fields every side reports.
    """

    def __enter__(self) -> Window:
        release_memory()
        self.rss_before = rss_mib()
        self.reset_ok = reset_peak_rss()
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.t1, self.c1 = time.perf_counter(), time.process_time()
        self.peak = peak_rss_mib() if self.reset_ok else None

    @property
    def wall_s(self) -> float:
        return self.t1 - self.t0

    def summary(self) -> dict[str, Any]:
        return {"eval_wall_s": round(self.t1 - self.t0, 3), "eval_cpu_s": round(self.c1 - self.c0, 3),
                "rss_before_eval_mib": self.rss_before, "eval_peak_rss_mib": self.peak}


# -------------------------------------------------------------------------------------------------
# result files
# -------------------------------------------------------------------------------------------------
def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON at ``path`` (temp file + rename: a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    """A side process's result, with its peak RSS and the load at its end added."""
    result["peak_rss_mib"] = peak_rss_mib()
    result["loadavg_at_end"] = os.getloadavg()
    write_json_atomic(path, result)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table: one header line, the separator, one line per row (cells as given, ``str()``-ed)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    """The command that started this process (the interpreter relative to the working directory when inside it)."""
    exe = Path(sys.executable)
    shown = os.path.relpath(exe, Path.cwd()) if exe.is_relative_to(Path.cwd()) else str(exe)
    return " ".join([shown, *sys.argv])


def write_summary(out_dir: Path, name: str, tag: str, summary: dict[str, Any], table: str) -> Path:
    """Print ``table`` (markdown) and write ``summary`` with the command, the table, the core count and
    the torch version to ``out_dir/<name>[_<tag>].json``; returns the path."""
    print("\n" + table, flush=True)
    path = out_dir / f"{name}{'_' + tag if tag else ''}.json"
    write_json_atomic(path, {"command": command_line(), **summary, "cpus": os.cpu_count(),
                             "torch": torch.__version__, "table": table})
    print(f"\nwritten {path}", flush=True)
    return path


# -------------------------------------------------------------------------------------------------
# torchrun configurations (scale-out benchmarks)
# -------------------------------------------------------------------------------------------------
def dist_parser(doc: str, configs_help: str) -> argparse.ArgumentParser:
    """The parser of a ``PxT`` benchmark with the arguments they all share (``--worker`` and what follows
    it are internal: the launched ranks get them)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="tiny-llama", help="zoo model name (the lead runs smollm2-135m)")
    p.add_argument("--configs", default="1x1,2x1", help=configs_help)
    p.add_argument("--repeats", type=int, default=2, help="runs per configuration (the fastest is kept)")
    p.add_argument("--tag", default="")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def dist_configs(text: str) -> list[tuple[int, int]]:
    """``"2x1,1x2"`` -> ``[(1, 1), (2, 1), (1, 2)]``: P processes x T threads, the 1x1 reference first."""
    configs: list[tuple[int, int]] = []
    for item in (c.strip() for c in text.split(",") if c.strip()):
        procs, _, threads = item.partition("x")
        configs.append((int(procs), int(threads)))
    if not configs or configs[0] != (1, 1):
        configs.insert(0, (1, 1))
    return configs


def torchrun(script: str, procs: int, threads: int, worker_args: Sequence[str], result: Path) -> dict[str, Any]:
    """Run ``script --worker <worker_args> --threads T --result FILE`` under ``torchrun --standalone`` with
    ``procs`` processes (gloo, progress bars off) and return rank 0's JSON result with ``procs``,
    ``wall_s`` (the whole launch) and ``load_before`` added."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", script,
           "--worker", *worker_args, "--threads", str(threads), "--result", str(result)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GRADEDIT_NO_PROGRESS": "1", "GRADEDIT_DIST_BACKEND": "gloo"}
    load = os.getloadavg()[0]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return {**json.loads(result.read_text()), "procs": procs, "wall_s": time.perf_counter() - t, "load_before": load}
