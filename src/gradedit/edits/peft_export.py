"""Export a ``WeightEdit`` as a peft LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).

Per target module the adapter's update is ``lora_B @ lora_A`` with scaling ``lora_alpha / r = 1``:

* low-rank / rank-1 / component terms are exact: ``lora_B = scale · B``, ``lora_A = A``;
* dense and indexed terms are summed per module and factored by a truncated SVD
  ``U_k S_k V_kᵀ`` (``lora_B = U_k √S_k``, ``lora_A = √S_k V_kᵀ``);
* several terms on one module are concatenated (ranks add), so the sum is exact up to the SVD cut.

Targets are ``nn.Linear`` weights and GPT-2 ``Conv1D`` weights (stored ``[in, out]``; their factors are
transposed and the config sets ``fan_in_fan_out``). Load with
``peft.PeftModel.from_pretrained(base_model, folder)`` on a model with the same module names as the one
passed to :func:`export_lora`.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._files import atomic_dir, save_safetensors_atomic
from ..models import infer_kind
from .handle import param_table
from .terms import EditError, EditTerm, LowRankTerm, compute_dtype

if TYPE_CHECKING:
    from .weight_edit import WeightEdit

logger = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


@dataclass
class LoraExport:
    """What :func:`export_lora` wrote.

    Attributes:
        path: the adapter folder.
        ranks: exported LoRA rank per target module.
        svd_ranks: rank kept from the SVD of the module's dense/indexed part (0 if it has none).
        rel_errors: ``‖ΔW − lora_B lora_A‖_F / ‖ΔW‖_F`` per module (0 where the export is exact).
        energy_kept: fraction of the dense part's squared singular values kept (1.0 without one).
    """

    path: Path
    ranks: dict[str, int] = field(default_factory=dict)
    svd_ranks: dict[str, int] = field(default_factory=dict)
    rel_errors: dict[str, float] = field(default_factory=dict)
    energy_kept: dict[str, float] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        """The largest rank over modules (the config's ``r``)."""
        return max(self.ranks.values(), default=0)

    @property
    def max_rel_error(self) -> float:
        return max(self.rel_errors.values(), default=0.0)


def choose_rank(S: torch.Tensor, *, rank: int | None, energy: float | None, eps: float, size: int) -> int:
    """How many singular values (descending ``S``) to keep.

    Default: the numerical rank (``S > S_max · size · eps``). ``energy``: the smallest ``k`` with
    ``Σ_{i<k} S_i² ≥ energy · Σ S_i²``. ``rank``: at most ``rank``. Both given: the smaller.
    """
    if S.numel() == 0 or float(S[0]) <= 0.0:
        return 0
    k = int((S > S[0] * size * eps).sum())
    if energy is not None:
        cum = S.square().cumsum(0) / S.square().sum()
        k = min(k, int((cum < energy - 1e-12).sum()) + 1)
    if rank is not None:
        k = min(k, rank)
    return k


def _lora_target(canon: str, alias: dict[str, str], modules: dict[str, torch.nn.Module]) -> tuple[str, bool]:
    """``(module name, is_conv1d)`` of the module owning parameter ``canon``, or a clear EditError."""
    from transformers.pytorch_utils import Conv1D

    tied = sorted(a for a, c in alias.items() if c == canon)
    if len(tied) > 1:
        raise EditError(f"{canon} is a tied weight ({', '.join(tied)}); a LoRA adapter on one module cannot "
                        "reproduce an edit of a tied weight. Use merge() or save() for this edit")
    module_name, _, attr = canon.rpartition(".")
    module = modules.get(module_name)
    if attr != "weight" or module is None or not isinstance(module, (torch.nn.Linear, Conv1D)):
        kind = type(module).__name__ if module is not None else "no module"
        raise EditError(f"{canon} ({kind}) is not supported as a LoRA target: only nn.Linear (and GPT-2 "
                        "Conv1D) weights are. Use merge() or save() for this edit, or leave it out")
    return module_name, isinstance(module, Conv1D)


def _task_type(model: torch.nn.Module) -> str | None:
    try:
        return "CAUSAL_LM" if infer_kind(model) == "clm" else None
    except ValueError:
        return None


def export_lora(edit: WeightEdit, directory: Path, model: torch.nn.Module, *, rank: int | None = None,
                energy: float | None = None) -> LoraExport:
    """Write ``edit`` as a peft LoRA adapter for ``model`` into ``directory``.

    Args:
        edit: the edit; every touched parameter must be an ``nn.Linear``/``Conv1D`` weight.
        directory: the adapter folder (created in one step if new; files replaced atomically if not).
        model: the base model the adapter is for (module names come from it; it is not modified).
        rank: cap on the SVD rank of each module's dense/indexed part (low-rank terms stay exact).
        energy: keep the smallest SVD rank reaching this fraction of squared singular values, in (0, 1].

    Returns:
        A :class:`LoraExport` with the ranks chosen and the relative error per module.

    Raises:
        ImportError: peft is not installed.
        EditError: an unsupported or tied target, an empty edit, or a bad ``rank``/``energy``.
    """
    try:
        import peft
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("export_lora needs peft: pip install 'gradedit[peft]'") from err
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise EditError(f"rank must be a positive int, got {rank!r}")
    if energy is not None and not 0.0 < float(energy) <= 1.0:
        raise EditError(f"energy must lie in (0, 1], got {energy!r}")

    binding = edit._bind(model)
    alias, params = param_table(model)
    modules = dict(model.named_modules())
    groups: dict[str, list[tuple[EditTerm, str]]] = {}
    for term, mapping in zip(edit.terms, binding.names):
        if term.scale != 0.0:
            for given, canon in mapping.items():
                groups.setdefault(canon, []).append((term, given))
    if not groups:
        raise EditError("nothing to export: the edit is empty (or every term has scale 0)")

    report = LoraExport(path=directory)
    tensors: dict[str, torch.Tensor] = {}
    conv1d: dict[str, bool] = {}
    for canon, items in groups.items():
        module_name, is_conv1d = _lora_target(canon, alias, modules)
        Bs, As = _factors(items, canon, module_name, report, rank=rank, energy=energy)
        B, A = torch.cat(Bs, 1), torch.cat(As, 0)
        if B.shape[1] == 0:
            logger.info("%s: the update is zero; no adapter for this module", module_name)
            continue
        lora_B, lora_A = (A.T, B.T) if is_conv1d else (B, A)  # Conv1D stores W as [in, out]
        save_dtype = torch.float64 if params[canon].dtype == torch.float64 else torch.float32
        key = f"base_model.model.{module_name}"
        tensors[f"{key}.lora_A.weight"] = lora_A.to(save_dtype).contiguous()
        tensors[f"{key}.lora_B.weight"] = lora_B.to(save_dtype).contiguous()
        report.ranks[module_name] = int(B.shape[1])
        conv1d[module_name] = is_conv1d
    if not report.ranks:
        raise EditError("nothing to export: the edit's update is zero on every module")

    r_max = report.rank
    pattern = {re.escape(m): r for m, r in report.ranks.items() if r != r_max}
    flags = set(conv1d.values())
    if len(flags) > 1:
        logger.warning("mixing nn.Linear and Conv1D targets; peft will toggle fan_in_fan_out per module")
    config = peft.LoraConfig(
        r=r_max, lora_alpha=r_max, rank_pattern=pattern, alpha_pattern=dict(pattern),
        target_modules=sorted(report.ranks), lora_dropout=0.0, bias="none",
        fan_in_fan_out=flags == {True}, task_type=_task_type(model), inference_mode=True,
        base_model_name_or_path=_base_name(edit, model),
    )
    _write(directory, config, tensors)
    logger.info("exported %d LoRA modules (max rank %d, max rel. error %.3g) to %s",
                len(report.ranks), r_max, report.max_rel_error, directory)
    return report


def _factors(items: list[tuple[EditTerm, str]], canon: str, module_name: str, report: LoraExport, *,
             rank: int | None, energy: float | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(Bs, As)`` in float64 on the CPU for one parameter; records the SVD rank and error in ``report``."""
    Bs: list[torch.Tensor] = []
    As: list[torch.Tensor] = []
    for term, _ in items:
        if isinstance(term, LowRankTerm):
            b, a = term.factors(torch.float64, "cpu")
            Bs.append(b)
            As.append(a)
    dense = [(t, g) for t, g in items if not isinstance(t, LowRankTerm)]
    report.svd_ranks[module_name], report.rel_errors[module_name] = 0, 0.0
    report.energy_kept[module_name] = 1.0
    if dense:
        src_dtype = compute_dtype(*(t.dtype for t, _ in dense))
        D = sum(t.delta(g, torch.float64, "cpu") for t, g in dense)
        assert isinstance(D, torch.Tensor)
        U, S, Vh = torch.linalg.svd(D, full_matrices=False)
        k = choose_rank(S, rank=rank, energy=energy, eps=torch.finfo(src_dtype).eps, size=max(D.shape))
        root = S[:k].sqrt()
        Bs.append(U[:, :k] * root)
        As.append(root[:, None] * Vh[:k])
        sq = S.square()
        tail = float(sq[k:].sum())
        total = D + (torch.cat(Bs[:-1], 1) @ torch.cat(As[:-1], 0) if len(Bs) > 1 else 0.0)
        total_sq = float(total.square().sum())
        report.svd_ranks[module_name] = k
        report.rel_errors[module_name] = (tail / total_sq) ** 0.5 if total_sq > 0 else 0.0
        report.energy_kept[module_name] = float(sq[:k].sum() / sq.sum()) if float(sq.sum()) > 0 else 1.0
        logger.debug("%s: SVD rank %d of %d, rel. error %.3g", canon, k, S.numel(), report.rel_errors[module_name])
    return Bs, As


def _base_name(edit: WeightEdit, model: torch.nn.Module) -> str | None:
    name: Any = edit.metadata.get("base_model") or getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(name) if name else None


def _write(directory: Path, config: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Weights then config; a new folder appears in one step, an existing one gets per-file renames."""
    if not directory.exists():
        with atomic_dir(directory) as tmp:
            save_safetensors_atomic(tensors, tmp / WEIGHTS_NAME)
            config.save_pretrained(str(tmp))
        return
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} exists and is not a folder")
    with tempfile.TemporaryDirectory(prefix=".lora-export-", dir=directory) as tmp:
        save_safetensors_atomic(tensors, Path(tmp) / WEIGHTS_NAME)
        config.save_pretrained(tmp)
        os.replace(Path(tmp) / WEIGHTS_NAME, directory / WEIGHTS_NAME)
        os.replace(Path(tmp) / CONFIG_NAME, directory / CONFIG_NAME)
