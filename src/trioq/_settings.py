"""One settings system for the broker and the worker, on pydantic-settings.

A setting is a field of a :class:`Settings` model (``trioq.broker.BrokerSettings``,
``trioq.worker.WorkerSettings``). Where it comes from, highest first, the same for
the command line and for library use::

    command-line flags  >  environment variables  >  constructor arguments  >  defaults

So ``BrokerSettings(port=0)`` and ``trioq.Worker(concurrency=5)`` read the
environment too: an operator reconfigures a deployed program the same way whether it
runs under ``python -m trioq.worker`` or embeds the worker. Only the command line has
flags (:meth:`Settings.load` with ``args``); ``load`` also takes an explicit
environment, for tests.

Units: inside the code every duration is seconds, as a float, and its name carries no
unit (``group_commit_interval``, ``job_lease``, ``poll_interval``). Milliseconds exist
only at the edges, under osqueue's public names: flags and environment variables that
end in ``-ms`` / ``_MS`` (converted here, nowhere else), wire fields (``leaseMs``,
``waitMs``) and the stored document (``core._state.Limits`` counts in its
milliseconds). A field declares its public names next to it with :class:`Public`.

Every invalid value raises :class:`SettingsError` with one line that names what the
operator typed: ``BROKER_PORT: 'abc' is not a valid int``, ``--concurrency must be
>= 1, not 0``.
"""

from __future__ import annotations

import argparse
import contextvars
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Self, overload

from pydantic import ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class SettingsError(ValueError):
    """An invalid setting; the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class Public:
    """The names a setting has outside the code, declared on its field::

        port: Annotated[int, Public("--port", "BROKER_PORT", "bind port")] = 8080

    ``ms``: the flag and the variable take whole milliseconds (osqueue's ``_MS``
    names); the field holds seconds. ``aliases``: more flags for the same setting.
    ``shown_default``: how ``--help`` states a default the value would not explain.
    """

    flag: str
    env: str
    help: str
    ms: bool = False
    aliases: tuple[str, ...] = ()
    shown_default: str | None = None


class LegacyName:
    """A name a setting had before every duration was seconds, still understood.

    As a constructor argument it is converted to the field it became (the field's
    own name wins when both are given); read on an instance, it gives that field in
    the old unit. ``per_second``: 1000 for an old ``_ms`` name, 1 for an ``_s`` one.
    """

    def __init__(self, field: str, per_second: int) -> None:
        self.field = field
        self.per_second = per_second

    @overload
    def __get__(self, settings: None, owner: type) -> LegacyName: ...
    @overload
    def __get__(self, settings: object, owner: type | None = None) -> float: ...
    def __get__(self, settings: object, owner: type | None = None) -> LegacyName | float:
        if settings is None:
            return self
        value: float = getattr(settings, self.field)
        return round(value * 1000) if self.per_second == 1000 else value


@dataclass(frozen=True, slots=True)
class _Given:
    """A value as it was given, and where: a flag, a variable or a keyword."""

    origin: str
    value: Any
    per_second: int = 1
    """1000 when ``value`` is in milliseconds."""


@dataclass(frozen=True, slots=True)
class _Inputs:
    """What a construction reads besides its arguments (see :meth:`Settings.load`)."""

    environ: Mapping[str, str] | None = None
    """None: ``os.environ``."""
    args: argparse.Namespace | None = None


_INPUTS: contextvars.ContextVar[_Inputs | None] = contextvars.ContextVar(
    "trioq_settings_inputs", default=None
)
_SWITCH = {"1": True, "true": True, "yes": True, "on": True}
_SWITCH |= {"0": False, "false": False, "no": False, "off": False}


class _Named(PydanticBaseSettingsSource):
    """The pydantic-settings source of values given under public names (flags or
    environment variables), as typed; the model converts them."""

    def __init__(self, settings_cls: type[BaseSettings], given: dict[str, _Given]) -> None:
        super().__init__(settings_cls)
        self.given = given

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.given.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.given)


class Settings(BaseSettings):
    """Base of trioq's settings models: precedence, units and errors as in the
    module docstring. An assignment is checked like a constructor argument, and a
    refused one changes nothing."""

    model_config = SettingsConfigDict(
        extra="forbid", validate_assignment=True, ignored_types=(LegacyName,)
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(_explain(exc, _winners(type(self), values))) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in type(self).model_fields:
            # checked on a copy first: pydantic would keep a value that a check
            # across settings refuses
            type(self).load({**self.model_dump(), name: value}, environ={})
        super().__setattr__(name, value)

    @classmethod
    def load(
        cls,
        values: Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        args: argparse.Namespace | None = None,
    ) -> Self:
        """Settings from ``args`` (parsed by a parser :meth:`add_arguments` filled),
        then ``environ`` (default ``os.environ``), then ``values``, then defaults."""
        token = _INPUTS.set(_Inputs(environ, args))
        try:
            return cls(**dict(values or {}))
        finally:
            _INPUTS.reset(token)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # public names only: no variable named after a field (PORT, HOST, ...) is read
        inputs = _INPUTS.get() or _Inputs()
        return (
            _Named(settings_cls, _from_flags(settings_cls, inputs.args)),
            _Named(settings_cls, _from_environment(settings_cls, inputs.environ)),
            init_settings,
        )

    @model_validator(mode="before")
    @classmethod
    def _from_the_edges(cls, data: Any) -> Any:
        """Old names to fields, and given text to values (milliseconds to seconds)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, legacy in _legacy_names(cls):
            if old in data:
                value = data.pop(old)
                if legacy.field not in data:
                    number = isinstance(value, int | float) and not isinstance(value, bool)
                    data[legacy.field] = value / legacy.per_second if number else value
        for name, value in data.items():
            if isinstance(value, _Given):
                data[name] = _convert(cls.model_fields[name], value)
        return data

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """A flag for every setting that has one. Each parses to the text typed (None
        when absent), which :meth:`load` converts and checks like any other source."""
        for name, field, public in _public_fields(cls):
            flags = (public.flag, *public.aliases)
            if field.annotation is bool:
                state = "on" if field.default else "off"
                parser.add_argument(
                    *flags,
                    dest=name,
                    action=argparse.BooleanOptionalAction,
                    default=None,
                    help=f"{public.help} (env {public.env}=1/0; default {state})",
                )
            else:
                metavar = public.flag.lstrip("-").upper().replace("-", "_")
                parser.add_argument(
                    *flags, dest=name, default=None, metavar=metavar, help=_help(field, public)
                )

    @classmethod
    def public_name(cls, name: str) -> str:
        """How an operator names a setting: ``--bucket (S3_BUCKET)``."""
        public = _public(cls.model_fields[name])
        return name if public is None else f"{public.flag} ({public.env})"


def _public(field: FieldInfo) -> Public | None:
    return next((item for item in field.metadata if isinstance(item, Public)), None)


def _public_fields(cls: type[BaseSettings]) -> Iterator[tuple[str, FieldInfo, Public]]:
    for name, field in cls.model_fields.items():
        public = _public(field)
        if public is not None:
            yield name, field, public


def _legacy_names(cls: type) -> Iterator[tuple[str, LegacyName]]:
    for klass in cls.__mro__:
        for old, value in vars(klass).items():
            if isinstance(value, LegacyName):
                yield old, value


def _from_environment(
    cls: type[BaseSettings], environ: Mapping[str, str] | None
) -> dict[str, _Given]:
    """Values set in the environment (an empty variable counts as unset)."""
    env = os.environ if environ is None else environ
    return {
        name: _Given(public.env, env[public.env], 1000 if public.ms else 1)
        for name, _, public in _public_fields(cls)
        if env.get(public.env, "") != ""
    }


def _from_flags(cls: type[BaseSettings], args: argparse.Namespace | None) -> dict[str, _Given]:
    if args is None:
        return {}
    given: dict[str, _Given] = {}
    for name, _, public in _public_fields(cls):
        value = getattr(args, name, None)
        if value is not None and value != "":
            given[name] = _Given(public.flag, value, 1000 if public.ms else 1)
    return given


def _convert(field: FieldInfo, given: _Given) -> Any:
    """A flag's or variable's text as the field's value; other types are parsed by
    pydantic (and its errors explained by :func:`_explain`)."""
    value = given.value
    if not isinstance(value, str):
        return value  # a --switch/--no-switch flag: already a bool
    if field.annotation is bool:
        switch = _SWITCH.get(value.strip().lower())
        if switch is None:
            raise ValueError(
                f"{given.origin}: {value!r} is not a valid switch (1/0, true/false, yes/no, on/off)"
            )
        return switch
    if given.per_second == 1000:
        try:
            return int(value) / 1000
        except ValueError:
            raise ValueError(f"{given.origin}: {value!r} is not a valid int") from None
    return value


def _winners(cls: type[Settings], values: Mapping[str, Any]) -> dict[str, _Given]:
    """Per field, the value that won, and where it came from (for messages)."""
    winners = {name: _Given(name, value) for name, value in values.items()}
    for old, legacy in _legacy_names(cls):
        if old in values and legacy.field not in values:
            winners[legacy.field] = _Given(old, values[old], legacy.per_second)
    inputs = _INPUTS.get() or _Inputs()
    winners.update(_from_environment(cls, inputs.environ))
    winners.update(_from_flags(cls, inputs.args))
    return winners


_NOT_A = {
    "int_parsing": "int",
    "int_from_float": "int",
    "int_type": "int",
    "float_parsing": "number",
    "float_type": "number",
    "string_type": "string",
}


def _explain(exc: ValidationError, winners: Mapping[str, _Given]) -> str:
    """The first error, in one line, naming the flag, variable or argument."""
    error = exc.errors()[0]
    ctx = error.get("ctx", {})
    if error["type"] == "value_error":
        message = str(ctx.get("error", error["msg"]))
    else:
        message = error["msg"]
    if not error["loc"]:
        return message  # a check across settings, or text that does not convert
    name = str(error["loc"][0])
    given = winners.get(name, _Given(name, error["input"]))
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown setting {name!r}"
    if kind in _NOT_A:
        return f"{given.origin}: {given.value!r} is not a valid {_NOT_A[kind]}"
    for bound, relation in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if bound in ctx:
            limit = ctx[bound] * given.per_second
            shown = "positive" if (bound, limit) == ("gt", 0) else f"{relation} {limit:g}"
            return f"{given.origin} must be {shown}, not {given.value}"
    return f"{given.origin}: {message}"


def _help(field: FieldInfo, public: Public) -> str:
    """``<help> (env VAR; default D)``, the default in the flag's unit."""
    default = field.default
    if public.shown_default is not None:
        shown: str | None = public.shown_default
    elif default is None:
        shown = None
    elif public.ms:
        shown = str(round(default * 1000))
    elif isinstance(default, float):
        shown = f"{default:g}"
    else:
        shown = str(default)
    tail = f"env {public.env}" + ("" if shown is None else f"; default {shown}")
    return f"{public.help} ({tail})"
