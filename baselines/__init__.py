"""The built-in codecs, one module or subpackage each.

Importing this package (splitbench does, through its ``splitbench.codecs`` entry point) imports
every module in it, and their ``@register_codec`` decorators register the codecs: adding a codec
here is one module plus its ``conf/codec/<name>.yaml``.
"""
from importlib import import_module
from pkgutil import iter_modules

for _module in iter_modules(__path__):
    import_module(f"{__name__}.{_module.name}")
