"""Executes notebooks/quickstart.ipynb end to end with small settings."""

import os
import signal

import nbformat
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKSTART_SMALL", "1")
    monkeypatch.chdir(tmp_path)
    nb = nbformat.read(os.path.join(REPO, "notebooks", "quickstart.ipynb"), as_version=4)
    # nbclient's asyncio loop removes its SIGINT handler by installing Python's default one
    # (asyncio's rule), whatever was there before: under a shell that started the tests in
    # the background, SIGINT was ignored, and the tests after this one must find it so.
    previous = signal.getsignal(signal.SIGINT)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        signal.signal(signal.SIGINT, previous)
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert "before:" in outputs and "reward" in outputs
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))
