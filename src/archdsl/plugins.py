"""Plugins: ops defined in the user's own modules, loaded by module name.

Importing a plugin module registers its ops (`@register`), so the language, the graph, the cost
model, the compiler and the search all know them. A module is named in one of three ways:

* `--plugin my_package.ops` on any `archdsl` command (repeatable);
* the `ARCHDSL_PLUGINS` environment variable: module names separated by commas or `os.pathsep`
  (processes started by archdsl, such as the search's Ray workers, inherit it);
* an installed package's entry point in the `archdsl.ops` group, whose value is the module:
  `[project.entry-points."archdsl.ops"] my_ops = "my_package.ops"`.

The environment and the entry points are read once, the first time the op registry is used.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import traceback
from importlib.metadata import entry_points

from archdsl.errors import Location, Problem, SpecError

ENTRY_POINT_GROUP = "archdsl.ops"
ENVIRONMENT_VARIABLE = "ARCHDSL_PLUGINS"

_loaded: set[str] = set()
_configured_loaded = False


def modules_in_environment() -> list[str]:
    text = os.environ.get(ENVIRONMENT_VARIABLE, "")
    return [name.strip() for name in re.split(f"[,{re.escape(os.pathsep)}]", text) if name.strip()]


def _where_it_failed(error: BaseException, module: str) -> str:
    """The line of the plugin's own file where its import failed."""
    spec = importlib.util.find_spec(module)
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if spec is not None and frame.filename == spec.origin]
    return f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def load_plugin(module: str, origin: str) -> None:
    """Import one plugin module; a module that does not import, or that registers an op name
    that exists, is one `SpecError` located at `origin` (the option or variable that named it)."""
    if module in _loaded:
        return
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is not None and (module == error.name or module.startswith(error.name + ".")):
            raise SpecError(
                Problem(
                    f"plugin module {module!r} not found: is it installed, or on PYTHONPATH "
                    f"(the directory that holds it, not the file)?",
                    (),
                    Location(origin),
                )
            ) from None
        raise SpecError(
            Problem(f"plugin module {module!r} does not import: {error}{_where_it_failed(error, module)}", (), Location(origin))
        ) from None
    except Exception as error:  # noqa: BLE001  (a plugin is the user's code: any failure in it is reported as the plugin's)
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SpecError(
            Problem(
                f"plugin module {module!r} does not import: {type(error).__name__}: {message}{_where_it_failed(error, module)}",
                (),
                Location(origin),
            )
        ) from None
    _loaded.add(module)


def load_plugins(modules: list[str] | tuple[str, ...] = (), origin: str = "--plugin") -> None:
    """Load the named modules (the CLI's `--plugin`), and add them to `ARCHDSL_PLUGINS` so that
    processes started from here load them too."""
    for module in modules:
        load_plugin(module, f"{origin} {module}")
    if modules:
        os.environ[ENVIRONMENT_VARIABLE] = os.pathsep.join(dict.fromkeys(modules_in_environment() + list(modules)))


def load_configured_plugins() -> None:
    """The modules of the `archdsl.ops` entry points and of `ARCHDSL_PLUGINS` (once per process)."""
    global _configured_loaded
    if _configured_loaded:
        return
    _configured_loaded = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        load_plugin(entry.value.split(":")[0], f"entry point {entry.name} = {entry.value!r} (group {ENTRY_POINT_GROUP})")
    for module in modules_in_environment():
        load_plugin(module, f"{ENVIRONMENT_VARIABLE}={os.environ[ENVIRONMENT_VARIABLE]}")
