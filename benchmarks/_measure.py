"""Step clock and memory readings shared by both benchmark sides (stdlib + torch only).

Both sides are timed the same way, without reaching into either trainer: torch's global
optimizer-step hook (``torch.optim.optimizer.register_optimizer_step_post_hook``) stamps the wall
clock after every optimiser step of any optimiser in the process. Step k's time is
``stamp[k] - stamp[k-1]``: everything the trainer does between two updates (the base-model
gradients for the next example, the encoder-decoder forward/backward, bookkeeping). Evaluation is
kept out of the timed window by the caller (evaluation only runs before step 1 and after the last
step). Only the GRADIEND encoder-decoder is optimised by either trainer, so every stamp is a step.
The process CPU time (user+sys, all threads) is stamped too: on a shared machine it is the less
load-sensitive of the two.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import threading
import time
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


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    result["peak_rss_mib"] = peak_rss_mib()
    result["loadavg_at_end"] = os.getloadavg()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2))
