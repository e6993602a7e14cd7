"""The settings tables of docs/settings.md, generated from the settings' own Field descriptions.

A hand-written table drifts from the code (a renamed setting, a changed default, a new one
nobody documented); rendering it from `Settings.model_fields` and `EncoderSpec.model_fields`
means the code is the only place a setting is described. `querylift settings-table` rewrites
the marked blocks of the document and leaves the prose around them alone;
tests/service/ops/test_settings.py fails when the committed document differs from what this renders.
"""

from __future__ import annotations

import json
import re
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from encoders import EncoderSpec
from service.ops.settings import Settings

ENV_PREFIX = "QUERYLIFT_"
REGENERATE = "querylift settings-table"


def _default(field: FieldInfo) -> Any:
    return field.get_default(call_default_factory=True, validated_data={})


def render_value(value: Any) -> str:
    """One default as a table cell: what a user would write in the environment."""
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):  # a secret default is never printed
        return "set (hidden)"
    if isinstance(value, EncoderSpec):  # profile-dependent: name the model, not every field
        return f"{value.name} spec"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, Enum):
        text = str(value.value)
    elif isinstance(value, list | dict | tuple):
        text = json.dumps(value)
    else:
        text = str(value)
    return f"`{text}`" if text else "empty"


def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def settings_table() -> str:
    """Every `QUERYLIFT_*` setting: variable, default, meaning (Settings field order)."""
    lines = [_row(["variable", "default", "meaning"]), _row(["---"] * 3)]
    for name, field in Settings.model_fields.items():
        default = _default(field)
        env = ENV_PREFIX + name.upper()
        if isinstance(default, EncoderSpec):
            env += "__<FIELD>"
        lines.append(_row([f"`{env}`", render_value(default), _cell(field.description)]))
    return "\n".join(lines) + "\n"


def encoder_table() -> str:
    """Every encoder field, with the `embedded` profile's query and document defaults."""
    query = _default(Settings.model_fields["query_encoder"])
    document = _default(Settings.model_fields["document_encoder"])
    lines = [
        _row(["field", "query default", "document default", "meaning"]),
        _row(["---"] * 4),
    ]
    for name, field in EncoderSpec.model_fields.items():
        lines.append(
            _row(
                [
                    f"`{name.upper()}`",
                    render_value(getattr(query, name)),
                    render_value(getattr(document, name)),
                    _cell(field.description),
                ]
            )
        )
    return "\n".join(lines) + "\n"


def blocks() -> dict[str, str]:
    """Marker name -> generated markdown, one entry per marked block of docs/settings.md."""
    return {"settings-table": settings_table(), "encoder-table": encoder_table()}


def _marker(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- {re.escape(name)}:start -->\n)(.*?)(<!-- {re.escape(name)}:end -->)", re.S
    )


def extract(text: str) -> dict[str, str]:
    """The current content of each marked block (missing markers raise ValueError)."""
    out = {}
    for name in blocks():
        m = _marker(name).search(text)
        if m is None:
            raise ValueError(f"no <!-- {name}:start --> ... <!-- {name}:end --> block")
        out[name] = m.group(2)
    return out


def update(text: str) -> str:
    """`text` with every marked block replaced by its generated content."""
    for name, body in blocks().items():
        pattern = _marker(name)
        if pattern.search(text) is None:
            raise ValueError(f"no <!-- {name}:start --> ... <!-- {name}:end --> block")
        text = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(3), text, count=1)
    return text


def sync(path: Path, *, check: bool = False) -> bool:
    """Whether `path`'s blocks were already current; rewrites them unless `check`."""
    text = path.read_text()
    new = update(text)
    if new != text and not check:
        path.write_text(new)
    return new == text
