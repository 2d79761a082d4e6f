"""Build a module's LangChain tools on first use.

Importing langchain_core took 0.43 s on a two-core machine, more than the rest of `ragedit --help`. Tool modules
therefore build their StructuredTool objects when the attribute is first read, and importing them for their functions
stays cheap.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def lazy_attributes(module_name: str, factories: dict[str, Callable[[], Any]]) -> Callable[[str], Any]:
    """Return a module `__getattr__` that builds each named attribute with its factory on first access.

    The built value is stored in the module, so later reads are plain attribute reads.
    """

    def __getattr__(name: str) -> Any:
        factory = factories.get(name)
        if factory is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        value = factory()
        setattr(sys.modules[module_name], name, value)
        return value

    return __getattr__
