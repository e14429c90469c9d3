"""``python -m gradedit`` runs the same CLI as the ``gradedit`` script (torchrun -m gradedit needs it)."""

import subprocess
import sys


def test_python_dash_m_gradedit_is_the_cli():
    out = subprocess.run([sys.executable, "-m", "gradedit", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "decompose" in out.stdout and "train" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "gradedit", "no-such-command"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
