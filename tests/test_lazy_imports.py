"""``import gradedit`` and the CLI parser stay light: torch loads only when a command needs it."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sys.modules))"],
                         check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_help_path_does_not_import_torch() -> None:
    mods = _modules_after("import gradedit.cli.app as m\nm.build_parser()")
    assert "torch" not in mods and "transformers" not in mods


def test_public_names_resolve_on_first_use() -> None:
    import gradedit as ge

    assert ge.Trainer.__name__ == "Trainer" and ge.load_model.__name__ == "load_model"
    assert ge.metrics.__name__ == "gradedit.metrics"
    assert set(ge.__all__) >= {"Trainer", "WeightEdit", "blast_radius", "metrics", "features", "zoo"}
    try:
        ge.not_a_name  # noqa: B018
    except AttributeError as err:
        assert "not_a_name" in str(err)
    else:  # pragma: no cover
        raise AssertionError("unknown attribute did not raise")
