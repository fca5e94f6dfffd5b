"""Load the user's upcaster registry from the dotted path in ``evolution.upcasters``."""

from __future__ import annotations

import importlib

from pipeline.evolution.errors import UpcasterLoadError
from pipeline.evolution.upcast import Upcasters

DEFAULT_ATTRIBUTE = "upcasters"


def load_upcasters(spec: str) -> Upcasters:
    """The ``Upcasters`` named by ``spec``: ``"package.module:attribute"``, or
    ``"package.module"`` for a module exposing ``upcasters``. Importing the module runs its
    ``@upcasters.register`` decorators. Any failure raises ``UpcasterLoadError``, a
    ConfigError naming the setting ``evolution.upcasters``."""
    module_name, _, attribute = spec.strip().partition(":")
    attribute = attribute or DEFAULT_ATTRIBUTE
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise UpcasterLoadError(f"'{spec}' is not of the form package.module[:attribute]")
    try:
        module = importlib.import_module(module_name)
    # Importing runs user code; whatever it raises makes the setting unusable.
    except Exception as exc:
        raise UpcasterLoadError(
            f"cannot import '{module_name}': {type(exc).__name__}: {exc}"
        ) from exc
    registry = getattr(module, attribute, None)
    if registry is None:
        raise UpcasterLoadError(f"module '{module_name}' has no attribute '{attribute}'")
    if not isinstance(registry, Upcasters):
        raise UpcasterLoadError(
            f"'{module_name}:{attribute}' is a {type(registry).__name__}, not an Upcasters "
            "registry (pipeline.evolution.Upcasters)"
        )
    return registry
