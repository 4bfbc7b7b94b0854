"""The output lock: fcntl where there is one, filelock elsewhere (Windows), the same refusal."""

from __future__ import annotations

import builtins

import pytest

import unitrec as ur
from unitrec.files.lock import output_lock


@pytest.fixture(params=["fcntl", "filelock"])
def flavour(request, monkeypatch):
    if request.param == "filelock":  # as on Windows: no fcntl module
        real = builtins.__import__

        def no_fcntl(name, *args, **kwargs):
            if name == "fcntl":
                raise ImportError("No module named 'fcntl'")
            return real(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_fcntl)
    return request.param


@pytest.mark.filterwarnings("ignore:only soft file lock:UserWarning")  # filelock without fcntl
def test_a_second_writer_is_refused_and_the_lock_file_goes(tmp_path, flavour):
    out = tmp_path / "acts.h5"
    with output_lock(out):
        assert (tmp_path / "acts.h5.lock").exists()
        with pytest.raises(ur.RecordingError, match="another process is writing"):
            with output_lock(out):
                pass
    assert not (tmp_path / "acts.h5.lock").exists()
    with output_lock(out):  # free again
        pass
