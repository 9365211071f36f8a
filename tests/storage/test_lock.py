"""One process at a time per data directory: a second opener is refused, not allowed to
interleave its own log with the first one's."""

import subprocess
import sys
from pathlib import Path

import pytest

from segsvc.storage.errors import StoreLockedError
from segsvc.storage.store import Store


def test_a_second_store_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    first = Store(tmp_path, map_size=1 << 24)
    with pytest.raises(StoreLockedError, match="in use by another segsvc process"):
        Store(tmp_path, map_size=1 << 24)
    first.close()
    # Once the first one is closed the directory can be opened again.
    Store(tmp_path, map_size=1 << 24).close()


def test_another_process_is_refused_while_the_store_is_open(tmp_path: Path) -> None:
    store = Store(tmp_path, map_size=1 << 24)
    code = (
        "import sys; from pathlib import Path; from segsvc.storage.store import Store\n"
        "from segsvc.storage.errors import StoreLockedError\n"
        "try:\n    Store(Path(sys.argv[1]), map_size=1 << 24)\n"
        "except StoreLockedError:\n    sys.exit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=60)
    store.close()
    assert result.returncode == 3
