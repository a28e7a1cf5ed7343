"""Who makes a sample's choices: a random generator, an Optuna trial (define-by-run), a stored
configuration, or given values. Each answers the same three questions by choice name."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

from archdsl.errors import Location, Problem
from archdsl.search.errors import SearchError


class Chooser(Protocol):
    """Makes the choices of one sample: a random generator, an Optuna trial, a stored config."""

    def categorical(self, name: str, labels: list) -> Any: ...

    def integer(self, name: str, low: int, high: int, step: int, log: bool) -> int: ...

    def real(self, name: str, low: float, high: float, step: float | None, log: bool) -> float: ...


class RandomChooser:
    """Uniform over each choice's options (log-uniform for `log: true` ranges)."""

    def __init__(self, rng):
        self.rng = rng

    def categorical(self, name, labels):
        return labels[int(self.rng.integers(len(labels)))]

    def integer(self, name, low, high, step, log):
        if log:
            value = math.exp(self.rng.uniform(math.log(low), math.log(high + 1)))
            return int(min(high, max(low, math.floor(value))))
        return int(low + step * self.rng.integers((high - low) // step + 1))

    def real(self, name, low, high, step, log):
        value = math.exp(self.rng.uniform(math.log(low), math.log(high))) if log else self.rng.uniform(low, high)
        if step:
            value = min(high, low + round((value - low) / step) * step)
        return float(value)


class OptunaChooser:
    """Asks an Optuna trial (define-by-run), so model-based samplers see every choice by name."""

    def __init__(self, trial):
        self.trial = trial

    def categorical(self, name, labels):
        return self.trial.suggest_categorical(name, labels)

    def integer(self, name, low, high, step, log):
        return self.trial.suggest_int(name, low, high, step=step, log=log)

    def real(self, name, low, high, step, log):
        return self.trial.suggest_float(name, low, high, step=step, log=log)


class ConfigChooser:
    """Replays a stored configuration (choice name -> value)."""

    def __init__(self, config: Mapping):
        self.config = config

    def _get(self, name):
        if name not in self.config:
            raise SearchError(
                Problem(
                    f"this configuration has no value for the choice {name!r}: was the space changed since the "
                    f"search started? Its choices: {', '.join(sorted(self.config)) or 'none'}",
                    (),
                    Location("config"),
                )
            )
        return self.config[name]

    def categorical(self, name, labels):
        return self._get(name)

    def integer(self, name, low, high, step, log):
        return self._get(name)

    def real(self, name, low, high, step, log):
        return self._get(name)


class FixedChooser:
    """Given values for some choices, the first option (or the low end) for the rest."""

    def __init__(self, fixed: Mapping | None = None, fallback: Chooser | None = None):
        self.fixed = dict(fixed or {})
        self.fallback = fallback

    def categorical(self, name, labels):
        if name in self.fixed:
            return self.fixed[name]
        return self.fallback.categorical(name, labels) if self.fallback else labels[0]

    def integer(self, name, low, high, step, log):
        if name in self.fixed:
            return self.fixed[name]
        return self.fallback.integer(name, low, high, step, log) if self.fallback else low

    def real(self, name, low, high, step, log):
        if name in self.fixed:
            return self.fixed[name]
        return self.fallback.real(name, low, high, step, log) if self.fallback else low
