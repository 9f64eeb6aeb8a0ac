"""Values read from users' files, checked at the boundary (README "Safety and bad input").

The JSON and YAML files a user gives or may have edited (drags, split folders and drag
samples, training configs and overrides, a checkpoint's ``ema.json`` and
``trainer_state.json``, a VAE run's ``step.json``, a build's ``manifest.json``, curation
models, label and UID lists, a VAE config for ``random-model --vae``) are parsed with
:func:`parse_json` or :func:`parse_yaml`. They turn every problem into one
:class:`~puppet_master.errors.UserInputError` that names the file:

* text that is not UTF-8 or not JSON / YAML;
* an integer literal of more than :data:`MAX_INT_DIGITS` digits (Python refuses to
  convert more than 4,300 digits with a ``ValueError`` that names no file, and no setting
  needs more than 20);
* in JSON, ``NaN``, ``Infinity`` and numbers too large to be finite (``1e999``): no file
  we read means them. YAML's ``.nan`` / ``.inf`` are left to the schema that reads the
  value (a training config refuses every non-finite number, naming the field);
* nesting deeper than the interpreter's recursion limit.

:func:`check_config_numbers` checks the numbers of a loaded model's configs (finite, and
a few named ones within their range).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import yaml

from . import limits
from .errors import UserInputError

#: Longest integer literal read from JSON or YAML (2**64 has 20 digits).
MAX_INT_DIGITS = 32


class YAMLSyntaxError(UserInputError):
    """The text is not YAML (a config override then keeps the raw text as a string)."""


class _LongNumber(Exception):
    """An integer literal longer than :data:`MAX_INT_DIGITS` (raised inside a parser, reported with the file)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.digits = sum(c.isdigit() for c in text)


class _NonFinite(Exception):
    """``NaN`` / ``Infinity`` or an overflowing number in JSON."""


def _long_number_message(what: str, exc: _LongNumber) -> str:
    return (f"{what} holds an integer of {exc.digits} digits (at most {MAX_INT_DIGITS} are read): no setting is that "
            "large, fix the number")


def _json_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS + 1:  # + 1: the sign
        raise _LongNumber(text)
    return int(text)


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text if len(text) <= 40 else text[:37] + "...")
    return value


def _json_constant(name: str):
    raise _NonFinite(name)


def parse_json(text: str | bytes, what: str, error: type[UserInputError] = UserInputError) -> Any:
    """Parse JSON text read from a file the user gave (or one a run wrote and may find changed).

    Args:
        text: the file's bytes (decoded as UTF-8) or text.
        what: how messages name the file, e.g. ``"drags file 'a.json'"``.
        error: the :class:`UserInputError` subclass to raise (e.g. ``DragError``).

    Returns:
        The parsed value: dicts, lists, strings, ``int`` of at most :data:`MAX_INT_DIGITS`
        digits, finite ``float``, ``bool``, ``None``.

    Raises:
        UserInputError (``error``): not UTF-8, not JSON, an overlong integer, a
            non-finite number, or nesting too deep to parse.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(f"{what} is not UTF-8 text (byte {exc.start}): save it as UTF-8 JSON") from None
    try:
        return json.loads(text, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    except _LongNumber as exc:
        raise error(_long_number_message(what, exc)) from None
    except _NonFinite as exc:
        raise error(f"{what} holds a number that is not finite ({exc}): JSON numbers must be finite") from None
    except RecursionError:
        raise error(f"{what} is nested too deeply to be read") from None


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with integer literals bounded to :data:`MAX_INT_DIGITS` digits."""


def _yaml_int(loader: _BoundedLoader, node: yaml.Node) -> int:
    text = loader.construct_scalar(node)
    if sum(c.isdigit() for c in str(text)) > MAX_INT_DIGITS:
        raise _LongNumber(str(text))
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _yaml_int)


def parse_yaml(text: str, what: str) -> Any:
    """Parse YAML text (PyYAML's safe loader: plain data only) with bounded integers.

    Args:
        text: the YAML document.
        what: how messages name it, e.g. ``"config file 'a.yaml'"``.

    Returns:
        The document (``None`` when empty).

    Raises:
        YAMLSyntaxError: not YAML.
        UserInputError: an integer literal longer than :data:`MAX_INT_DIGITS` digits,
            nesting too deep to parse, or more than
            :data:`~puppet_master.limits.MAX_CONFIG_NODES` values once aliases are expanded.
    """
    try:
        data = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except _LongNumber as exc:
        raise UserInputError(_long_number_message(what, exc)) from None
    except yaml.YAMLError as exc:
        raise YAMLSyntaxError(f"{what} is not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise UserInputError(f"{what} is nested too deeply to be read") from None
    limits.check_expanded_size(data, what)  # a YAML alias bomb: small text, a huge document
    return data


#: Config entries of a model's components with a range besides being finite: ``name: (low, low inclusive)``.
CONFIG_LOWER_BOUNDS = {
    "scaling_factor": (0.0, False),
    "sigma_min": (0.0, False),
    "sigma_max": (0.0, False),
    "warp_init_sigma": (0.0, True),
    "detail_transfer_radius": (0.0, True),
    "chroma_anchor_sigma": (0.0, True),
    "drag_warp_radius": (0.0, False),
    "num_inference_steps": (1.0, True),
    "min_guidance_scale": (0.0, True),
    "max_guidance_scale": (0.0, True),
}


def check_config_numbers(config: Mapping, what: str, error: type[UserInputError] = UserInputError) -> None:
    """Refuse a non-finite number anywhere in a component's config, and the named entries out of range.

    A model folder's ``config.json`` files are JSON that Python reads with ``NaN`` and
    ``Infinity`` allowed; a VAE with ``scaling_factor: NaN`` would give a black video with
    exit status 0. Entries of :data:`CONFIG_LOWER_BOUNDS` must also be above (or at)
    their bound, and ``sigma_min`` below ``sigma_max``.

    Args:
        config: the component's config (a diffusers ``FrozenDict`` or any mapping).
        what: how messages name it, e.g. ``"model 'm' (vae/config.json)"``.
        error: the exception class to raise.

    Raises:
        UserInputError (``error``): naming the entry and its value.
    """
    stack: list[tuple[str, Any]] = [(str(k), v) for k, v in config.items()]
    while stack:
        key, value = stack.pop()
        if isinstance(value, Mapping):
            stack.extend((f"{key}.{k}", v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{key}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            raise error(f"{what}: {key} is {value}, not a finite number; the model's config is damaged")
    for key, (low, inclusive) in CONFIG_LOWER_BOUNDS.items():
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value < low or (value == low and not inclusive):
            bound = f">= {low:g}" if inclusive else f"> {low:g}"
            raise error(f"{what}: {key} is {value}; it must be {bound}")
    low, high = config.get("sigma_min"), config.get("sigma_max")
    if isinstance(low, (int, float)) and isinstance(high, (int, float)) and not low < high:
        raise error(f"{what}: sigma_min ({low}) must be below sigma_max ({high})")
