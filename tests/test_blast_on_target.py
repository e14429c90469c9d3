"""The blast radius's on-target numbers per target token: a he -> she edit must not read as failure."""

from __future__ import annotations

import logging

import pytest
import torch

import gradedit as ge
from gradedit.blast import TargetSpec, blast_radius
from gradedit.blast.report import on_target_token_lines

# ' he' (with its space) is the actual token twice, ' she' twice (a text-initial 'he'/'she' is another token)
TEXTS = ["he said he was here and he left", "she said it and she left", "he and she"]


def _edit(lm: ge.LanguageModel) -> ge.WeightEdit:
    name = "transformer.h.0.mlp.c_fc.weight"
    p = dict(lm.model.named_parameters())[name]
    return ge.WeightEdit.dense({name: torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.4})


def _oracle(lm: ge.LanguageModel, tok: str, other: str) -> tuple[float, float, float, float]:
    """Mean P(tok) and P(other) at the positions whose actual token is ``tok`` (explicit forward)."""
    t, u = lm.token_id(tok), lm.token_id(other)
    p_self, p_other = [], []
    for text in TEXTS:
        ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            probs = lm.model(ids).logits[0].double().softmax(-1)
        for pos in range(1, ids.shape[1]):
            if int(ids[0, pos]) == t:
                p_self.append(float(probs[pos - 1, t]))
                p_other.append(float(probs[pos - 1, u]))
    return sum(p_self) / len(p_self), sum(p_other) / len(p_other), len(p_self), 0.0


def test_on_target_is_reported_per_token_against_an_oracle(tiny_gpt2: ge.LanguageModel, caplog) -> None:
    lm, edit = tiny_gpt2, _edit(tiny_gpt2)
    with caplog.at_level(logging.INFO, logger="gradedit.blast"):
        rep = blast_radius(lm, edit, {"en": ["The city is quiet."]}, TargetSpec(TEXTS, [" he", " she"]),
                           control=False, keep_tokens=False)
    by = rep.on_target["by_token"]  # type: ignore[index]
    assert set(by) == {" he", " she"}
    for tok, other in ((" he", " she"), (" she", " he")):
        p_self, p_other, n, _ = _oracle(lm, tok, other)
        assert by[tok]["n_positions"] == n
        assert by[tok]["p_before"] == pytest.approx(p_self, rel=1e-4)
        assert by[tok]["p_other"][other]["before"] == pytest.approx(p_other, rel=1e-4)
        with edit.applied(lm.model):
            q_self, q_other, _, _ = _oracle(lm, tok, other)
        assert by[tok]["p_after"] == pytest.approx(q_self, rel=1e-4)
        assert by[tok]["p_other"][other]["after"] == pytest.approx(q_other, rel=1e-4)
    assert sum(d["n_positions"] for d in by.values()) == rep.on_target["n_positions"]  # type: ignore[index]
    lines = on_target_token_lines(rep.on_target)  # type: ignore[arg-type]
    assert len(lines) == 2 and "at ' he' positions (n=2)" in lines[0] and "P(' she')" in lines[0]
    assert all(line in rep.summary() for line in lines)
    assert "blast radius: corpus 1/2 'en'" in caplog.text  # progress: each corpus announces itself
