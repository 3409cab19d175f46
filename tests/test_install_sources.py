"""infra/pip_to_uv.sh: uv installs from exactly the package sources pip is configured with."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "infra" / "pip_to_uv.sh"


def uv_options(tmp_path: Path, config_lines: list[str]) -> list[str]:
    """The script's output for a pip whose `pip config list` prints config_lines."""
    fake_pip = tmp_path / "pip"
    listing = tmp_path / "listing.txt"
    listing.write_text("".join(f"{line}\n" for line in config_lines))
    fake_pip.write_text(f'#!/usr/bin/env bash\n[ "$1 $2" = "config list" ] && cat {listing}\n')
    fake_pip.chmod(0o755)
    out = subprocess.run([str(SCRIPT), str(fake_pip)], check=True, capture_output=True,
                         text=True).stdout
    return out.splitlines()


def test_every_source_pip_knows_is_passed_on(tmp_path: Path) -> None:
    options = uv_options(tmp_path, [
        "global.constraint='/etc/pip/constraints.txt'",
        "global.extra-index-url='file:///srv/a/simple file:///srv/b/simple'",
        "global.index-url='https://mirror.invalid/simple'",
        "install.trusted-host='mirror.invalid'",
        ":env:.find-links='/opt/wheels'",
        "global.cert='/etc/ssl/ca.pem'",
        "global.timeout='60'",
    ])
    pairs = list(zip(options[::2], options[1::2], strict=True))
    assert pairs[0] == ("--index-strategy", "unsafe-best-match")  # pip's best-of-all-indexes
    assert set(pairs[1:]) == {
        ("--index-url", "https://mirror.invalid/simple"),
        ("--extra-index-url", "file:///srv/a/simple"),
        ("--extra-index-url", "file:///srv/b/simple"),
        ("--find-links", "/opt/wheels"),
        ("--constraint", "/etc/pip/constraints.txt"),
        ("--allow-insecure-host", "mirror.invalid"),
    }
    assert len(pairs) == 7  # cert and timeout are not uv options


def test_a_variable_overrides_the_files_index_url_and_duplicates_go_once(tmp_path: Path) -> None:
    options = uv_options(tmp_path, [
        ":env:.index-url='https://from-variable.invalid/simple'",
        "global.index-url='https://from-file.invalid/simple'",
        "global.find-links='/opt/wheels'",
        ":env:.find-links='/opt/wheels'",
    ])
    assert options[options.index("--index-url") + 1] == "https://from-variable.invalid/simple"
    assert options.count("--find-links") == 1


def test_no_configuration_means_the_default_index_only(tmp_path: Path) -> None:
    assert uv_options(tmp_path, []) == ["--index-strategy", "unsafe-best-match"]
    assert "--no-index" in uv_options(tmp_path, ["global.no-index='true'"])
