"""Optional dependencies: one import point that says which pip extra provides a missing package."""

from __future__ import annotations

import importlib

# module -> (pip package, fastlayers extra that installs it)
_EXTRAS = {
    "sklearn": ("scikit-learn", "examples"),
    "networkx": ("networkx", "examples"),
    "timm": ("timm", "timm"),
    "torch_geometric": ("torch_geometric", "pyg"),
}


def require(module: str, needed_by: str):
    """``importlib.import_module(module)``, or one clear ImportError naming the package and the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        package, extra = _EXTRAS.get(top, (top, None))
        how = f"pip install 'fastlayers[{extra}]'" if extra else f"pip install {package}"
        raise ImportError(f"{needed_by} needs {package}, which is not installed: {how}") from e
