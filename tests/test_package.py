"""The installed package: import names, the console script, the callbacks mapping."""

import subprocess
import sys
from pathlib import Path

import lightning_meta


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_callbacks_folder_is_installed_as_lightning_meta_callbacks_only(tmp_path):
    ok = run_python("import lightning_meta.callbacks as c; print(c.__name__)", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "lightning_meta.callbacks"
    clash = run_python("import callbacks", cwd=tmp_path)  # outside the repository: no top-level `callbacks`
    assert clash.returncode != 0 and "No module named 'callbacks'" in clash.stderr


def test_console_script_is_installed():
    bin_dir = Path(sys.executable).parent
    result = subprocess.run([bin_dir / "lightning-meta", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "fit" in result.stdout and "test" in result.stdout


def test_public_api_lists_what_it_exports():
    assert set(lightning_meta.__all__) <= set(dir(lightning_meta))
    assert {"Episode", "EpisodicDataModule", "MAML", "ProtoNet", "Conv4"} <= set(lightning_meta.__all__)
