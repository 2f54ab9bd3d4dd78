"""The README's Python code blocks run, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = _BLOCK.findall(README.read_text(encoding="utf-8"))
    assert blocks, "the README has no python code blocks"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for index, block in enumerate(blocks):
        code = compile(block, f"README.md python block {index + 1}", "exec")
        exec(code, namespace)
    # the quickstart, the MLflow and the PyTorch sections really stored their models
    import tiffin

    names = sorted(m.tag.name for m in tiffin.models.list())
    assert names == ["iris_clf", "mnist", "my_sklearn_model"]
    assert namespace["svc"].apis["classify"].route == "/classify"


def test_readme_names_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
