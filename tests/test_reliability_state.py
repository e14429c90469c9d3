"""Reproducibility (issue 18.4): importing gradedit and every one of its modules changes no global
state — torch, ``random`` and numpy RNG states, the root logger's handlers and level, the
environment, torch's thread count — checked in a fresh interpreter; and ``run.json`` of a training
run records versions, seeds, threads and the data fingerprint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from gradedit.data.schema import PairDataset
from gradedit.gradiend.train import TrainConfig, Trainer
from pronoun_rows import SUBJECTS, VERBS, pronoun_records

PROBE = textwrap.dedent("""
    import hashlib, importlib, json, logging, os, pkgutil, random, sys
    import numpy as np
    import torch

    def snapshot():
        root = logging.getLogger()
        return {
            "torch_rng": hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest(),
            "random": hashlib.sha256(repr(random.getstate()).encode()).hexdigest(),
            "numpy": hashlib.sha256(repr(np.random.get_state()).encode()).hexdigest(),
            "root_handlers": [type(h).__name__ for h in root.handlers],
            "root_level": root.level,
            "logging_disabled": logging.root.manager.disable,
            "environ": dict(os.environ),
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "default_dtype": str(torch.get_default_dtype()),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "grad_enabled": torch.is_grad_enabled(),
        }

    torch.manual_seed(1234); random.seed(1234); np.random.seed(1234)
    before = snapshot()
    import gradedit
    names = []
    for mod in pkgutil.walk_packages(gradedit.__path__, "gradedit."):
        importlib.import_module(mod.name)
        names.append(mod.name)
    gradedit.zoo  # the lazy attribute
    after = snapshot()
    print(json.dumps({"before": before, "after": after, "modules": names}))
""")


def test_importing_gradedit_changes_no_global_state() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRADEDIT_NO_PROGRESS"}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(out["modules"]) > 100  # every module was imported, not just the package
    assert "gradedit.cli.app" in out["modules"] and "gradedit.demo.german" in out["modules"]
    before, after = out["before"], out["after"]
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert changed == {}, f"importing gradedit changed global state: {changed}"


def test_run_json_records_versions_seeds_threads_dtype_device_and_data(tiny_gpt2, tmp_path) -> None:
    data = PairDataset.from_records(pronoun_records(SUBJECTS[:4], VERBS[:3]), target_classes=["masc", "fem"])
    cfg = TrainConfig(experiment_dir=str(tmp_path / "run"), max_steps=2, eval_steps=2, pre_prune_topk=50,
                      pre_prune_samples=4, eval_max_size=4, seed=7, max_seeds=2, min_convergent_seeds=2)
    Trainer(tiny_gpt2, data, ["masc", "fem"], config=cfg).train()
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    import platform

    import torch

    import gradedit

    assert run["versions"]["torch"] == torch.__version__ and run["versions"]["python"] == platform.python_version()
    assert run["gradedit_version"] == gradedit.__version__
    assert run["config"]["seed"] == 7
    assert run["torch_threads"] == torch.get_num_threads()
    assert run["data_fingerprint"] == data.fingerprint()
    assert run["base_model"] == "tiny-gpt2"
    import numpy
    import safetensors
    import transformers

    assert run["versions"]["transformers"] == transformers.__version__
    assert run["versions"]["numpy"] == numpy.__version__ and run["versions"]["safetensors"] == safetensors.__version__
    param = next(tiny_gpt2.model.parameters())
    assert run["model_dtype"] == "float32" == str(param.dtype).removeprefix("torch.")
    assert run["device"] == "cpu" == str(param.device)
    seeds = json.loads((tmp_path / "run" / "seed_report.json").read_text())
    assert run["seeds_tried"] == [7, 8] == [s["seed"] for s in seeds["seeds"]]
    assert run["chosen_seed"] == seeds["chosen_seed"] in (7, 8)
