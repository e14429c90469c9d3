"""``--autocast`` and ``--device-map`` / ``--offload-folder`` for the commands that only run forwards
(``blast``, ``evaluate``, ``score``).

Like ``--device`` (:mod:`.launch`), the options reach ``load_model`` through environment variables set
for the command (``GRADEDIT_AUTOCAST``, ``GRADEDIT_DEVICE_MAP``, ``GRADEDIT_OFFLOAD_FOLDER``), so no
torch is imported before a command's own checks. Nothing here imports torch (``gradedit --help`` stays fast).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["AUTOCAST_ENV", "DEVICE_MAP_ENV", "OFFLOAD_ENV", "add_precision", "device_map_arg", "precision_scope"]

#: the same names as in ``gradedit.models.dispatch`` (kept here so the CLI imports no torch)
AUTOCAST_ENV = "GRADEDIT_AUTOCAST"
DEVICE_MAP_ENV = "GRADEDIT_DEVICE_MAP"
OFFLOAD_ENV = "GRADEDIT_OFFLOAD_FOLDER"
_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")

AUTOCAST_HELP = ("run the scoring forwards in bf16 or fp16 autocast (default none); logits are cast to fp32 before "
                 "log-softmax, CE and KL; gradient and JVP forwards (encoder evaluation) stay fp32. bf16 keeps "
                 "fp32's range; fp16 can overflow (a warning says so)")
DEVICE_MAP_HELP = ("split or offload the model with accelerate (forward-only: --device is then ignored): auto, "
                   "balanced, sequential, a JSON object {\"module\": \"cpu\"|\"disk\"|\"cuda:N\"|N} or a JSON file. "
                   "Edited layers must stay in memory (not 'disk'); gradients (evaluate encoder) are refused")


def device_map_arg(value: str) -> str:
    """argparse ``type=`` of ``--device-map``: a strategy, a JSON object or an existing JSON file (checked
    for shape here; devices are checked when the model loads)."""
    text = value.strip()
    if text.lower() in _STRATEGIES:
        return text.lower()
    if not text.startswith("{"):
        if not Path(text).is_file():
            raise argparse.ArgumentTypeError(f"{value!r} is neither {', '.join(_STRATEGIES)}, a JSON object nor a file")
        return text
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{value!r} is not valid JSON ({err.msg})") from None
    if not isinstance(parsed, dict) or not parsed:
        raise argparse.ArgumentTypeError(f"{value!r} must be a non-empty JSON object of module name -> device")
    return text


def add_precision(parser: argparse.ArgumentParser) -> None:
    """Add ``--autocast``, ``--device-map`` and ``--offload-folder`` to a forward-only command's parser."""
    parser.add_argument("--autocast", choices=("none", "bf16", "fp16"), default="none", help=AUTOCAST_HELP)
    parser.add_argument("--device-map", type=device_map_arg, default=None, metavar="MAP", help=DEVICE_MAP_HELP)
    parser.add_argument("--offload-folder", default=None, metavar="DIR",
                        help="where --device-map 'disk' modules keep their weights (needed for 'disk')")


@contextlib.contextmanager
def precision_scope(args: argparse.Namespace) -> Iterator[None]:
    """Models loaded in the block without explicit options take the command's ``--autocast``,
    ``--device-map`` and ``--offload-folder`` (environment variables set for the block, restored on
    exit). Commands without these options change nothing."""
    given = {AUTOCAST_ENV: getattr(args, "autocast", None), DEVICE_MAP_ENV: getattr(args, "device_map", None),
             OFFLOAD_ENV: getattr(args, "offload_folder", None)}
    values = {k: str(v) for k, v in given.items() if v is not None}  # "none" too: it beats a shell's setting
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
