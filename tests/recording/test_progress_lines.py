"""Progress in logs (issue 22, item 21): when stderr is not a terminal (a SLURM log), recording
progress is written as whole lines, rarely, never as ``\\r`` redraws of a bar."""

from __future__ import annotations

import sys

import torch
from torch import nn

import unitrec as ur
from unitrec.recording.stream import progress_bar as _progress


def test_a_log_gets_a_line_at_the_start_and_one_at_the_end_a_terminal_a_bar(capsys, monkeypatch):
    bar = _progress(True, 100, 10)  # capsys' stderr is no terminal
    for _ in range(45):
        bar.update(2)
    bar.close()
    bar.close()  # a second close says nothing new
    err = capsys.readouterr().err
    assert "\r" not in err and err.endswith("\n")
    lines = err.splitlines()
    assert len(lines) == 2  # within the minute between lines: the first and the last only
    assert lines[0].startswith("recording: 10/100 img (10%), 0.0 img/s")
    assert lines[1].startswith("recording: 100/100 img (100%), ") and lines[1].endswith(" img/s")
    quiet = _progress(False, 4, 0)  # progress off: nothing
    quiet.update(4)
    quiet.close()
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal keeps tqdm's bar
    bar = _progress(True, 4, 0)
    bar.update(4)
    bar.close()
    assert "\r" in capsys.readouterr().err


def test_a_recording_logged_to_a_file_has_no_carriage_returns(tmp_path, capfd):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()).eval()
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    ur.record(model, x, ["1"], tmp_path / "a.h5", batch_size=4, progress=True)
    err = capfd.readouterr().err
    assert "\r" not in err
    assert [line for line in err.splitlines() if line.startswith("recording: ")][-1].startswith(
        "recording: 8/8 img (100%)")


def test_a_synthesis_logged_to_a_file_says_its_steps_and_score(capsys):
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()).eval()
    ur.visualize(model, {"name": "0", "channels": [1], "units": "center"}, size=16, steps=3, transforms=None,
                 normalize=None)
    err = capsys.readouterr().err
    assert "\r" not in err  # whole lines, no bar redraws
    lines = err.splitlines()
    assert lines[0].startswith("visualize: 0/3 step (0%)") and lines[-1].startswith("visualize: 3/3 step (100%)")
    assert "score=" in lines[-1]
