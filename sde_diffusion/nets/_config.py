"""A network's ``config``: its type name plus every constructor argument, JSON-ready, and the check of such dicts."""
from __future__ import annotations

import inspect
from typing import Any, Dict, Mapping


def json_ready(value: Any) -> Any:
    """Tuples become lists (what a JSON round trip gives back), so ``config == json.loads(json.dumps(config))``."""
    if isinstance(value, (tuple, list)):
        return [json_ready(v) for v in value]
    return value


def constructor_config(type_name: str, **arguments: Any) -> Dict[str, Any]:
    return {"type": type_name, **{k: json_ready(v) for k, v in arguments.items()}}


def check_arguments(cls: type, arguments: Mapping[str, Any], where: str) -> None:
    """Unknown keys raise ValueError listing the accepted ones."""
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(arguments) - set(accepted))
    if unknown:
        raise ValueError(f"{where}: unknown {cls.__name__} argument(s) {unknown}; accepted: {accepted}")


def check_dropout(dropout: float) -> float:
    dropout = float(dropout)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return dropout
