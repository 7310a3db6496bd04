"""Crawled text is data: `winnow inspect` and the dataset card never pass control sequences or markup on."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.inspect import inspect_documents, visible
from pipeline.report.render import markdown_code, markdown_text

HOSTILE = ("Clear \x1b[2J the screen, set \x1b]0;pwned\x07 the title, write the clipboard "
           "\x1b]52;c;ZXZpbA==\x07, and hide \u202eexe.txt, plus a C1 CSI \x9b31m.")


def test_control_characters_become_visible_escapes():
    shown = visible(HOSTILE)
    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown and "\u202e" not in shown
    assert "\\x1b[2J" in shown and "\\x07" in shown and "\\u202e" in shown and "\\x9b" in shown
    assert visible("tabs\tand\nnewlines stay") == "tabs\tand\nnewlines stay"


def test_inspect_prints_no_escape_sequences_from_pages(tmp_path, capsys):
    path = tmp_path / "part-00000-000.parquet"
    pq.write_table(pa.table({"id": ["a"], "url": ["http://x.example/\x1b]0;t\x07"], "text": [HOSTILE],
                             "language": ["en"]}), path)
    for color in (False, True):
        assert inspect_documents(str(path), n=1, color=color) == 0
        out = capsys.readouterr().out
        assert "\x07" not in out and "\x9b" not in out and "\u202e" not in out
        # With colour on, the only escapes are Winnow's own colour codes (SGR: ESC [ digits m).
        assert "\x1b" not in re.sub(r"\x1b\[[0-9;]*m", "", out)
        assert color or "\x1b" not in out
        assert "\\x1b[2J" in out


def test_card_text_is_literal_markdown():
    assert markdown_text("evil](http://x)<img src=x onerror=y>.com") == \
        "evil\\]\\(http://x\\)\\<img src=x onerror=y\\>.com"
    assert "\x1b" not in markdown_text("a\x1b[2Jb")
    assert markdown_code("file`with`ticks\n.warc") == "file'with'ticks\ufffd.warc"


def test_a_path_that_does_not_exist_or_holds_no_parquet_is_an_error_not_zero_matches(tmp_path, capsys):
    assert inspect_documents(str(tmp_path / "no-such-run")) == 2
    err = capsys.readouterr().err
    assert "no-such-run does not exist" in err and "0 documents" not in err
    (tmp_path / "empty").mkdir()
    assert inspect_documents(str(tmp_path / "empty"), as_json=True) == 2
    assert "holds no Parquet files" in capsys.readouterr().err
