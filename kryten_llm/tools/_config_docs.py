"""Write docs/CONFIGURATION.md from the config models, so the reference cannot drift.

Run `python -m kryten_llm.tools._config_docs > docs/CONFIGURATION.md`; a test fails when the file
and the models disagree.
"""

from __future__ import annotations

import inspect
import json
import sys
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from kryten_llm.config import ENV_PREFIX, Settings
from kryten_llm.daemon.reload import RESTART_SECTIONS

INTRO = f"""# Configuration reference

Generated from `kryten_llm/config.py` by `python -m kryten_llm.tools._config_docs`; do not edit by
hand. A worked example with comments is `config.example.json`.

- **One JSON file**, passed with `--config`. Every key is optional: the defaults below are a
  runnable configuration. Unknown keys are errors (a typo is reported, not ignored). Keys
  starting with `_` are comments, at any depth.
- **Environment overrides** win over the file: `{ENV_PREFIX}<SECTION>_<FIELD>`, e.g.
  `{ENV_PREFIX}NATS_URL`, `{ENV_PREFIX}TESTING_DRY_RUN=true`,
  `{ENV_PREFIX}MESSAGE_PROCESSING_MAX_MESSAGE_LENGTH=200`. Lists, maps and nested objects take
  JSON: `{ENV_PREFIX}LISTENER_IGNORED_USERS='["spambot"]'`. The log format is chosen with
  `--log-format` or `{ENV_PREFIX}LOG_FORMAT`.
- **Secrets** stay out of the file: a provider's `api_key_env` names the environment variable
  holding its key; NATS credentials and the control token can come from
  `{ENV_PREFIX}NATS_PASSWORD`, `{ENV_PREFIX}NATS_TOKEN`, `{ENV_PREFIX}CONTROL_TOKEN`. They are
  never printed, logged or written to the response log.
- **Check** a file with `kryten-llm --config FILE --validate-config`: every problem is listed
  with its field path and the offending value (secrets redacted); exit 0 when valid. It stays
  offline; `kryten-llm --config FILE check` then tries the bus and every provider for real.
- **Hot reload** (SIGHUP, or the control `reload` endpoint) applies every section live except
  {", ".join(f"`{s}`" for s in RESTART_SECTIONS)}, which are reported as needing a restart and keep
  their running values. Rate-limit history, spam penalties, chat history and conversations
  carry over. An invalid file is rejected and the running configuration stays.
"""


def _type_name(annotation: Any) -> str:
    """A field's type as a reader writes it: `int | None`, `list[str]`, `"allow" | "strip"`.

    Built from the annotation's structure, not from its `repr`: the repr of an `Annotated`
    inside an optional (`Optional[Annotated[int, ...]]`) does not survive being cut with a
    regular expression.
    """
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " | ".join(names + (["None"] if type(None) in args else []))
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin is not None:
        return f"{_type_name(origin)}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return "see below"
    if isinstance(value, dict) and value and isinstance(next(iter(value.values())), BaseModel):
        return "see below"
    text = json.dumps(value, default=str, ensure_ascii=False)
    return f"`{text}`" if len(text) <= 60 else f"`{text[:57]}...`"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _section(name: str, model: type[BaseModel], shape: str) -> list[str]:
    doc = inspect.cleandoc(model.__doc__ or "")
    lines = [
        f"## `{name}`",
        "",
        f"{doc} ({shape})",
        "",
        "| field | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for field_name, field in model.model_fields.items():
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        type_name = _type_name(field.annotation).replace("|", "\\|")
        default = _default(field).replace("|", "\\|")
        lines.append(f"| `{field_name}` | `{type_name}` | {default} | {description} |")
    return [*lines, ""]


def _shape(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is list:
        return "a list of these"
    if origin is dict:
        return "a map from a name you choose to one of these"
    return "an object"


def render() -> str:
    out = [INTRO]
    nested: list[tuple[str, type[BaseModel], str]] = []
    for name, field in Settings.model_fields.items():
        model = _model_of(field.annotation)
        if model is None:
            continue
        out += _section(name, model, _shape(field.annotation))
        for sub_name, sub_field in model.model_fields.items():
            sub = _model_of(sub_field.annotation)
            if sub is not None:
                nested.append((f"{name}.{sub_name}", sub, _shape(sub_field.annotation)))
    for name, model, shape in nested:
        out += _section(name, model, shape)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
