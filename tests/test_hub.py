"""`Model.from_pretrained`: offline and unreachable hubs fail with a way out; the load
path behind the download runs for real on local files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("steerlab._core")

import steerlab as sl
from steerlab import models

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _from_pretrained_in_subprocess(env_overrides: dict[str, str], tmp_path: Path) -> str:
    """Run from_pretrained in a fresh interpreter (the hub reads its env at import)."""
    pytest.importorskip("huggingface_hub")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_HOME": str(tmp_path / "hf_home"), **env_overrides})
    code = textwrap.dedent(
        f"""
        import steerlab as sl
        try:
            sl.Model.from_pretrained({REPO!r})
        except sl.ModelNotFoundError as exc:
            print("ModelNotFoundError:", exc)
        else:
            print("loaded")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_offline_says_how_to_load_locally(tmp_path: Path) -> None:
    out = _from_pretrained_in_subprocess({"HF_HUB_OFFLINE": "1"}, tmp_path)
    assert out.startswith("ModelNotFoundError:"), out
    assert REPO in out
    assert 'Model.load("path/to/model.gguf")' in out


def test_unreachable_hub_says_how_to_load_locally(tmp_path: Path) -> None:
    # Nothing listens on port 9 of the loopback: the connection is refused at once.
    out = _from_pretrained_in_subprocess(
        {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2"}, tmp_path
    )
    assert out.startswith("ModelNotFoundError:"), out
    assert 'Model.load("path/to/model.gguf")' in out


def test_missing_huggingface_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(sl.MissingExtraError, match=r"pip install 'steerlab\[hub\]'") as info:
        sl.Model.from_pretrained(REPO)
    assert isinstance(info.value, ImportError)


def test_argument_checks() -> None:
    with pytest.raises(sl.InvalidTypeError, match="repo_id must be a str"):
        sl.Model.from_pretrained(42)  # type: ignore[arg-type]
    with pytest.raises(sl.InvalidArgumentError, match="repo_id is empty"):
        sl.Model.from_pretrained("")
    with pytest.raises(sl.InvalidArgumentError, match="dtype"):
        sl.Model.from_pretrained(REPO, dtype="f16")


def _fake_download(monkeypatch: pytest.MonkeyPatch, folder: Path) -> list[dict[str, Any]]:
    hub = pytest.importorskip("huggingface_hub")
    calls: list[dict[str, Any]] = []

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        return str(folder)

    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    return calls


def test_hf_folder_download_loads(monkeypatch: pytest.MonkeyPatch, tiny_llama_dir: Path) -> None:
    calls = _fake_download(monkeypatch, tiny_llama_dir)
    model = sl.Model.from_pretrained("someone/tiny-llama", revision="main", dtype="f32")
    direct = sl.Model.load(tiny_llama_dir, dtype="f32")
    assert calls[0]["repo_id"] == "someone/tiny-llama"
    assert calls[0]["revision"] == "main"
    assert "*.safetensors" in calls[0]["allow_patterns"]
    assert "*.json" in calls[0]["allow_patterns"]
    assert (model.arch, model.n_layers, model.d_model) == (
        direct.arch,
        direct.n_layers,
        direct.d_model,
    )
    assert model.fingerprint == direct.fingerprint
    acts = model.capture(["hello world"], layers=[0, -1])
    assert acts.shape == (1, 2, model.d_model)


def test_gguf_file_download_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    try:
        source = Path(models.smollm2_135m_path())
    except sl.ModelNotFoundError as exc:
        pytest.skip(str(exc))
    (tmp_path / source.name).symlink_to(source)
    calls = _fake_download(monkeypatch, tmp_path)
    model = sl.Model.from_pretrained("someone/smollm2-gguf", gguf_file=source.name)
    assert calls[0]["allow_patterns"] == [source.name]
    assert model.arch == "llama"
    with pytest.raises(sl.ModelNotFoundError, match=r"no file 'other\.gguf'"):
        sl.Model.from_pretrained("someone/smollm2-gguf", gguf_file="other.gguf")
