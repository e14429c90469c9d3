"""Compare two JSON-like values: equal structure, floats within a tolerance (shared by the dist tests)."""

import math
from typing import Any


def assert_json_close(a: Any, b: Any, path: str = "", ignore: tuple[str, ...] = (), rel_tol: float = 1e-4,
                      abs_tol: float = 1e-6) -> None:
    """Dict keys equal, lists equal in length, floats within ``rel_tol``/``abs_tol`` (NaN == NaN), else
    ``==``; keys in ``ignore`` (e.g. timings) are not compared. The assertion names the path."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            if k not in ignore:
                assert_json_close(a[k], b[k], f"{path}.{k}", ignore, rel_tol, abs_tol)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_json_close(x, y, f"{path}[{i}]", ignore, rel_tol, abs_tol)
    elif isinstance(a, float) and isinstance(b, (int, float)):
        assert math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol) or (math.isnan(a) and math.isnan(b)), (path, a, b)
    else:
        assert a == b, (path, a, b)
