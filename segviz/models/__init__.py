"""One module per paper; importing this package imports every module here, and each registers its
configurations where it defines them (a new file is picked up without editing anything else)."""
import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
