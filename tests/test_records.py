"""Records on local disk: three outcomes of a read (the record, none, damaged), and what the CLI says."""

from __future__ import annotations

import logging

import fsspec
import pytest

from pipeline.cli import main
from pipeline.jsonfile import RecordError, read_json, write_json


def test_a_read_tells_missing_from_damaged(tmp_path, caplog):
    fs = fsspec.filesystem("file")
    path = str(tmp_path / "_done" / "00000.json")
    assert read_json(fs, path) is None
    write_json(fs, path, {"shard": "00000"})
    assert read_json(fs, path) == {"shard": "00000"}
    (tmp_path / "_done" / "00000.json").write_text('{"shard": "000')
    with pytest.raises(RecordError, match=f"{path}: not a JSON record .*: delete it or restore it"):
        read_json(fs, path)
    # A caller that rewrites the record anyway (a completion record: the shard is recomputed) may take it as
    # missing; the log still names it.
    with caplog.at_level(logging.WARNING, logger="winnow.records"):
        assert read_json(fs, path, damaged="missing") is None
    assert f"{path}: not a JSON record" in caplog.text and "taken as missing" in caplog.text


def test_status_of_a_run_with_a_damaged_manifest_names_it(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("stages: []\n")
    (tmp_path / "manifest.json").write_bytes(b"\x00\x01")
    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"winnow: {tmp_path}/manifest.json: not a JSON record" in err and "Traceback" not in err
