"""benchmarks/batch_throughput.py: a missing --model is one error line before anything is launched."""

from __future__ import annotations

import pytest

from benchmarks.batch_throughput import main


def test_missing_model_is_one_error_line(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    with pytest.raises(SystemExit) as exit_info:
        main(["--quick", "--model", str(missing)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"error: model '{missing}': no such folder; pass a folder written by "
                                       "pipe.save_pretrained() or a hub id such as "
                                       "Wan-AI/Wan2.1-T2V-1.3B-Diffusers.\n")
