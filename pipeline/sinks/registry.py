"""Sinks added through configuration: ``sinks: {<name>: {type: <type>, ...settings}}``.

``type`` is a built-in name (``webhook``) or a dotted path to your own class,
``mypackage.sinks:AuditSink``. A sink class has a ``Settings`` pydantic model for its
entry's other keys, ``__init__(self, name, settings)``, and implements ``Sink``.
The built-in Elasticsearch and Redis sinks keep their own sections (``elasticsearch``,
``redis``) and the names ``search`` and ``cache``.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from pydantic import ValidationError

from pipeline.config import Settings
from pipeline.errors import ConfigError
from pipeline.sinks.base import Sink

BUILTIN_TYPES = {"webhook": "pipeline.sinks.webhook:WebhookSink",
                 "new_record_state": "pipeline.sinks.flattened:NewRecordStateSink"}
RESERVED = ("search", "cache")


def resolve(name: str, type_name: Any) -> Any:
    """The sink class for an entry's ``type``; ConfigError naming the setting if unusable."""
    setting = f"sinks.{name}.type"
    if not isinstance(type_name, str) or not type_name:
        raise ConfigError(setting, f"is required: one of {sorted(BUILTIN_TYPES)} or 'module:Class'")
    path = BUILTIN_TYPES.get(type_name, type_name)
    module_name, _, class_name = path.partition(":")
    if not class_name:
        raise ConfigError(setting, f"'{type_name}' is neither a built-in type "
                                   f"{sorted(BUILTIN_TYPES)} nor of the form 'module:Class'")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(setting, f"cannot import '{path}': {exc}") from exc
    if not hasattr(cls, "Settings") or not hasattr(cls, "write"):
        raise ConfigError(setting, f"'{path}' needs a Settings model and a write() method")
    return cls


def build_configured(settings: Settings, only: str | None = None) -> dict[str, Sink]:
    """Instantiate the ``sinks`` entries (all, or just ``only``)."""
    built: dict[str, Sink] = {}
    for name, entry in settings.sinks.items():
        if only is not None and name != only:
            continue
        if name in RESERVED:
            raise ConfigError(f"sinks.{name}", f"'{name}' is the built-in sink's name; "
                                               "configure it in its own section")
        options = dict(entry)
        cls = resolve(name, options.pop("type", None))
        _refuse_unknown(name, cls.Settings, options)
        try:
            sink_settings = cls.Settings.model_validate(options)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"sinks.{name}.{where}", first["msg"]) from exc
        # A sink that writes to Kafka (uses_kafka) gets the one set of client settings.
        built[name] = (cls(name, sink_settings, kafka=settings.kafka)
                       if getattr(cls, "uses_kafka", False) else cls(name, sink_settings))
    return built


def _refuse_unknown(name: str, model: Any, options: dict[str, Any]) -> None:
    """A misspelled key is refused as in the main configuration, even when the sink's model
    would ignore it (pydantic's default), unless the model allows extra keys on purpose."""
    if getattr(model, "model_config", {}).get("extra") == "allow":
        return
    fields = getattr(model, "model_fields", {})
    known = set(fields) | {f.alias for f in fields.values() if getattr(f, "alias", None)}
    for key in options:
        if key not in known:
            guess = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f" (did you mean 'sinks.{name}.{guess[0]}'?)" if guess else (
                f" (known: {', '.join(sorted(known)) or 'none'})")
            raise ConfigError(f"sinks.{name}.{key}", "unknown setting" + hint)


def sink_names(settings: Settings) -> list[str]:
    """Every configured sink's name, built-in ones first."""
    names = []
    if settings.elasticsearch is not None:
        names.append("search")
    if settings.redis is not None:
        names.append("cache")
    return names + list(settings.sinks)


def select_sink(settings: Settings, requested: str | None) -> str:
    """The sink a worker process serves: the one asked for, or the only one configured."""
    names = sink_names(settings)
    if requested:
        if requested not in names:
            raise ConfigError("worker sink", f"no sink named '{requested}'; configured: "
                                             f"{', '.join(names) or 'none'}")
        return requested
    if len(names) == 1:
        return names[0]
    raise ConfigError(
        "worker sink",
        f"{len(names)} sinks configured ({', '.join(names) or 'none'}): run `cdc worker` "
        "(one process per sink) or choose one with --sink / CDC_WORKER_SINK",
    )
