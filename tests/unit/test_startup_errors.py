"""`python -m service` start-up failures are one clear line on stderr, not a traceback."""

from __future__ import annotations

import errno
import subprocess
import tempfile

import pytest

from service import __main__ as entry


def test_main_reports_an_unwritable_tmp_in_one_line_when_workers_need_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_tmp(*_: object, **__: object) -> str:
        # What tempfile raises on a read-only root without a /tmp volume.
        raise FileNotFoundError(errno.ENOENT, "No usable temporary directory found in ['/tmp']")

    def model_ok(*args: object, **_: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setenv("MNIST_WORKERS", "2")  # not a flag: main() copies flags into os.environ
    monkeypatch.setattr(tempfile, "mkdtemp", no_tmp)
    monkeypatch.setattr(entry.subprocess, "run", model_ok)
    assert entry.main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("error: cannot create the metrics directory for 2 workers"), err
    assert "No usable temporary directory" in err
    assert "mount a writable /tmp" in err
