"""A checkpoint written by one process must load in the next one. String hashes (and so the
order of frozensets inside condition trees) differ between processes, so the two processes
here run with different hash seeds, as a real restart does."""

import os
import subprocess
import sys
from pathlib import Path

WRITE = """
import sys
from pathlib import Path
from segsvc.config import Config
from segsvc.engine.clock import FakeClock
from segsvc.engine.conditions import AttributeCondition, EventCondition, Group, Window
from segsvc.engine.engine import Engine
from segsvc.engine.events import EventInput
from segsvc.engine.model import PersonKey
from segsvc.engine.people import PersonUpsert

engine = Engine(Config(data_dir=Path(sys.argv[1]), map_size=1 << 28), FakeClock())
ws = engine.workspace("default")
skus = tuple(f"SKU-{i:05}" for i in range(6))
ws.upsert_people([PersonUpsert(f"p{i}", attributes={"plan": skus[i % 6]}) for i in range(12)])
ws.track_events(
    [EventInput(PersonKey("id", f"p{i}"), "add_to_cart", None, {"sku": skus[i % 6]})
     for i in range(12)]
)
carts = EventCondition(
    "add_to_cart",
    filters=(AttributeCondition("one_of", attribute="sku", values=skus[:4]),),
    window=Window(7 * 86400),
)
plans = AttributeCondition("one_of", attribute="plan", values=skus[1:5])
sid = ws.create_segment("carts", "", True, Group("any", (carts, Group("all", (plans,)))))
print(sid.id, sid.member_count)
engine.close(checkpoint=True)
"""

READ = """
import sys
from pathlib import Path
from segsvc.config import Config
from segsvc.engine.clock import FakeClock
from segsvc.engine.engine import Engine

engine = Engine(Config(data_dir=Path(sys.argv[1]), map_size=1 << 28), FakeClock())
print(engine.workspace("default").get_segment(int(sys.argv[2])).member_count)
engine.close(checkpoint=False)
"""


def run(code: str, seed: int, *args: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_checkpoint_loads_in_a_process_with_other_string_hashes(tmp_path: Path) -> None:
    for seed in (1, 2, 3):
        folder = tmp_path / f"seed-{seed}"
        sid, count = run(WRITE, seed, str(folder)).split()
        assert int(count) == 10  # p0-p3 and p6-p9 by sku, p1-p4 and p7-p10 by plan
        for other in (seed + 10, seed + 20):
            assert run(READ, other, str(folder), sid) == count
