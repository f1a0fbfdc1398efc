"""Optional extras: ``pip install pluralign`` is the core (data, encoders, models, training, CLI); the HTTP
service, plots and the DPO family need extras. A module that needs one calls :func:`require` before
importing the stack, so a missing extra is one line naming the command to run, not an ImportError
traceback::

    pip install 'pluralign[serve]'     # pluralign serve, pluralign.client: fastapi, uvicorn, httpx, pydantic
    pip install 'pluralign[report]'    # pluralign report, benchmark plots: matplotlib
    pip install 'pluralign[datasets]'  # reading a directory saved by datasets' save_to_disk
    pip install 'pluralign[dpo]'       # pluralign dpo: TRL, PEFT, accelerate
    pip install 'pluralign[all]'       # all of them
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pluralign.errors import PluralignError

#: extra -> what needs it (for the message)
EXTRAS = {
    "serve": "the HTTP service and its client",
    "report": "plots and HTML reports",
    "datasets": "reading Hugging Face datasets",
    "dpo": "the DPO family",
}


class MissingExtraError(PluralignError, ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` to run."""

    def __init__(self, extra: str, module: str) -> None:
        self.extra = extra
        self.module = module
        what = EXTRAS.get(extra, f"the '{extra}' extra")
        super().__init__(f"{module} is not installed (needed for {what}): pip install 'pluralign[{extra}]'")


def require(extra: str, module: str) -> ModuleType:
    """Import ``module`` (part of the optional ``extra``) and return it, or raise :class:`MissingExtraError`.

    Only a missing module (``module`` or one it imports; also ``sys.modules[name] = None``) is reported as
    a missing extra; any other error while importing it (e.g. a version mismatch) propagates unchanged.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise MissingExtraError(extra, exc.name or module) from exc
