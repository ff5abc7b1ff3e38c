"""``examples/kds_dev.sh`` reads its settings from the environment; every one it reads is in its
``--help`` and in the table of ``examples/README.md`` (``TOPIC=`` was undocumented)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_every_setting_the_script_reads_is_documented() -> None:
    script = (EXAMPLES / "kds_dev.sh").read_text()
    read = set(re.findall(r"\$\{([A-Z][A-Z_]*):-", script))
    assert {"KDS_PORT", "TOPIC", "PRODUCER", "CONSUMER", "SEALEDBUS", "PYTHON"} <= read
    shown = subprocess.run(  # noqa: S603 - the example script's own help
        ["bash", str(EXAMPLES / "kds_dev.sh"), "--help"],  # noqa: S607 - bash from PATH
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "set -euo pipefail" not in shown  # the help ends where the comment does
    table = (EXAMPLES / "README.md").read_text()
    for name in read:
        assert re.search(rf"\b{name} \(", shown), f"{name} is not in kds_dev.sh --help"
        assert f"| `{name}` |" in table, f"{name} is not in the examples/README.md table"
