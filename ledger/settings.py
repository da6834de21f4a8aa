"""Configuration from environment variables, read by each process for what it needs.

A missing or malformed setting stops the process at start with a message naming the
variable, instead of failing later somewhere less obvious.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path


class SettingsError(Exception):
    pass


Env = Mapping[str, str]


def _raw(env: Env, name: str) -> str | None:
    value = env.get(name)
    return None if value is None or value.strip() == "" else value.strip()


def env_int(env: Env, name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def env_float(env: Env, name: str, default: float, *, minimum: float, maximum: float) -> float:
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def env_choice(env: Env, name: str, default: str, choices: Sequence[str]) -> str:
    raw = _raw(env, name)
    if raw is None:
        return default
    if raw.lower() not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}; got {raw!r}")
    return raw.lower()


def env_str(env: Env, name: str, default: str) -> str:
    raw = _raw(env, name)
    return default if raw is None else raw


def env_required(env: Env, name: str, why: str) -> str:
    raw = _raw(env, name)
    if raw is None:
        raise SettingsError(f"{name} must be set {why}")
    return raw


def data_dir(env: Env) -> Path:
    path = Path(env_str(env, "LEDGER_DATA_DIR", "./ledger-data")).expanduser()
    if path.exists() and not path.is_dir():
        raise SettingsError(f"LEDGER_DATA_DIR must be a directory, got {str(path)!r}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(f"LEDGER_DATA_DIR {str(path)!r} cannot be created: {exc}") from None
    return path


def port(env: Env, name: str, default: int) -> int:
    return env_int(env, name, default, minimum=0, maximum=65535)


def bind_host(env: Env) -> str:
    return env_str(env, "LEDGER_BIND_HOST", "127.0.0.1")


def shutdown_grace(env: Env) -> float:
    return env_float(env, "LEDGER_SHUTDOWN_GRACE_SECONDS", 10.0, minimum=0.0, maximum=600.0)


def current() -> Env:
    return os.environ
