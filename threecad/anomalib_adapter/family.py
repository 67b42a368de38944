"""The `anomalib` method family: one threecad method per image model of the installed anomalib.

A family is what the entry-point group `threecad.method_families` names (threecad.registry):
an object with `members()` (member name -> one-line description) and `method(member)` (its
Method class). Members are anomalib's image model classes by name (`anomalib:Patchcore`); the
classes are made when first asked for, from the model's constructor (config.py), so whatever
anomalib version is installed is what runs. Without anomalib every question is answered with
the one line saying how to install it.
"""
from __future__ import annotations

import difflib
import functools
import warnings

from threecad.anomalib_adapter.config import config_class, presets
from threecad.anomalib_adapter.method import AnomalibMethod
from threecad.errors import ThreecadError

INSTALL = "pip install 'threecad[anomalib]'"


class AnomalibFamily:
    name = "anomalib"

    @functools.cached_property
    def models(self) -> dict[str, type]:
        """anomalib's image model classes by name."""
        try:
            with warnings.catch_warnings():  # anomalib's notices about its own dependencies (timm, dinov2)
                warnings.simplefilter("ignore", FutureWarning)
                import anomalib.models.image as image
                from anomalib.models.components import AnomalibModule
        except ImportError as exc:
            raise ThreecadError(f"the anomalib models need anomalib ({INSTALL}): {exc}") from None
        return {n: getattr(image, n) for n in image.__all__
                if isinstance(getattr(image, n), type) and issubclass(getattr(image, n), AnomalibModule)}

    def version(self) -> str:
        import anomalib

        return anomalib.__version__

    def members(self) -> dict[str, str]:
        version = self.version()
        return {n: describe(self.models[n], version) for n in sorted(self.models, key=str.lower)}

    def method(self, member: str) -> type[AnomalibMethod]:
        found = {n.lower(): n for n in self.models}
        if member.lower() not in found:
            close = difflib.get_close_matches(member.lower(), list(found), n=1)
            hint = f" Did you mean 'anomalib:{found[close[0]]}'?" if close else ""
            raise ThreecadError(f"anomalib {self.version()} has no image model '{member}'.{hint} "
                                f"Known: {', '.join(sorted(self.models, key=str.lower))}")
        return method_class(self.models[found[member.lower()]], self.version())


def describe(model_cls: type, version: str) -> str:
    doc = (model_cls.__doc__ or model_cls.__name__).strip().splitlines()[0].rstrip(".")
    return f"anomalib {version}: {doc}"


@functools.cache
def method_class(model_cls: type, version: str) -> type[AnomalibMethod]:
    """The Method subclass for one anomalib model (made once per process)."""
    from anomalib.models.components import MemoryBankMixin

    from threecad.registry import member_name

    trained = not issubclass(model_cls, MemoryBankMixin)
    config_cls, arguments, fixed = config_class(model_cls, trained)
    return type(f"Anomalib{model_cls.__name__}", (AnomalibMethod,), {
        "__module__": __name__, "name": member_name(AnomalibFamily.name, model_cls.__name__),
        "description": describe(model_cls, version), "config_class": config_cls,
        "presets": presets(model_cls, config_cls), "model_class": model_cls, "arguments": arguments,
        "fixed_arguments": fixed, "trains_by_gradient": trained})
