"""segsvc: customer segments over roaring bitmaps, served over gRPC, persisted in LMDB."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """The installed segsvc's version (as `segsvc --version` prints it); "unknown" when the
    code runs from a checkout that was never installed."""
    try:
        return version("segsvc")
    except PackageNotFoundError:
        return "unknown"
