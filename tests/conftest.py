"""Shared fixtures: tiny random models (offline, deterministic) and quiet progress bars."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("GRADEDIT_NO_PROGRESS", "1")

import torch  # noqa: E402

import gradedit as ge  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one intra-op thread per xdist worker: two workers x two OpenMP threads on two cores spin
    # against each other and run several times slower than one thread each
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llama() -> ge.LanguageModel:
    return ge.load_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2() -> ge.LanguageModel:
    return ge.load_model("tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_bert() -> ge.LanguageModel:
    return ge.load_model("tiny-bert")


@pytest.fixture(scope="session", params=["tiny-llama", "tiny-gpt2", "tiny-bert"])
def tiny_lm(request: pytest.FixtureRequest) -> ge.LanguageModel:
    return ge.load_model(request.param)


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return [
        "He said that she would be late.",
        "Der Mann ist hier.",
        "The nurse thinks the city is quiet and the house is old, and the teacher knows it.",
        "ok",
        "Le chat noir dort sur la chaise.",
    ]
