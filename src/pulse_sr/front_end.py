"""What the command line and the web app share: one function builds their search settings.

Both front ends pass only what the user actually gave (argparse defaults are ``None``;
JSON fields absent from the request are absent here). Everything else is the front-end
default (``FRONT_END_DEFAULTS``: mode and compile ``auto``, lean memory on), then the
library's (PULSE's). Torch-free at import time.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from pulse_sr.errors import PulseError, SettingsError
from pulse_sr.search.settings import FRONT_END_DEFAULTS  # torch-free module

#: what the front ends run unless told otherwise (the library's SearchSettings defaults stay
#: the original loop: mode faithful, compile off, lean memory off)
FRONT_END_SETTINGS: dict[str, Any] = {**FRONT_END_DEFAULTS, "lean_memory": True}
#: how the front ends read an input unless told otherwise (pulse_sr.input_plan): the operator and
#: the noise decided from the input, faces in colour (the library's defaults stay PULSE's:
#: bicubic, no noise; ``--faithful`` pins those)
INPUT_DEFAULTS: dict[str, Any] = {"degradation": "auto", "noise_sigma": "auto", "grey_output": False}


def build_settings(given: Mapping[str, Any], *, faithful: bool = False) -> Any:
    """The validated :class:`~pulse_sr.search.settings.SearchSettings` for a front-end request.

    ``given``: settings field -> value, only for what the user set (``None`` values are
    ignored; keys that are not settings fields are ignored). ``faithful``: the original
    loop, bit for bit (mode faithful, eager, PULSE's single random start and schedules, the latent
    range; the input side is pinned by :func:`pulse_sr.input_plan.plan_input`);
    a given value that contradicts it is a :class:`SettingsError`. Impossible settings
    are a :class:`SettingsError` (``data``: ``field``, ``value``, ``problem``).
    """
    from pulse_sr.search.pulse import validate_settings
    from pulse_sr.search.settings import PULSE_SCHEDULES, SearchSettings

    names = {f.name for f in dataclasses.fields(SearchSettings)}
    values = {k: v for k, v in given.items() if k in names and v is not None}
    if "bad_noise_layers" in values:
        values["bad_noise_layers"] = tuple(values["bad_noise_layers"])
    user = dict(values)
    if faithful:
        for key, ok in (("mode", ("faithful",)), ("compile", ("off",)), ("schedule", PULSE_SCHEDULES),
                        ("range", ("latent",))):
            if key in user and user[key] not in ok:
                raise SettingsError(f"faithful contradicts {key} {user[key]}", field=key, value=user[key],
                                    problem="contradicts faithful")
        if user.get("start_pool", 1) > 1:
            raise SettingsError(f"faithful contradicts start_pool {user['start_pool']}", field="start_pool",
                                value=user["start_pool"], problem="contradicts faithful")
        if user.get("start") == "encoder":  # a learned start is not PULSE's random one
            raise SettingsError("faithful contradicts start encoder", field="start", value="encoder",
                                problem="contradicts faithful")
        values.update(mode="faithful", compile="off", range="latent")
    for key, value in FRONT_END_SETTINGS.items():
        values.setdefault(key, value)
    if "given" in names:
        values["given"] = tuple(sorted(user))
    try:
        settings = SearchSettings(**values)
        validate_settings(settings)
    except PulseError:
        raise
    except (TypeError, ValueError) as e:
        raise SettingsError(f"bad search settings: {e}", problem=str(e)) from None
    return settings
