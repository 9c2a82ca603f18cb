"""Helpers of the end-to-end tests."""

import subprocess
import sys


def recsys(*args, env):
    """Run the ``recsys`` CLI in a child process: ``subprocess.CompletedProcess`` with text stdout / stderr."""
    return subprocess.run(
        [sys.executable, "-m", "recsys_pipeline.cli", *args], env=env, capture_output=True, text=True, timeout=900
    )
