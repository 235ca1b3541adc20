"""Packaging promises: importing the library stays light."""

import subprocess
import sys


def test_import_does_not_import_tensorflow():
    code = (
        "import sys, motionaura_jax, motionaura_jax.train.loop, motionaura_jax.checkpoint, "
        "motionaura_jax.parallel.sharding, motionaura_jax.data\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'torch'))\n"
        "assert not bad, bad[:5]\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
