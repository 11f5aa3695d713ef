"""gptlab.fileio.read_jsonl: the one jsonl reader and its one policy for bad lines."""
import json

import pytest

from gptlab.fileio import read_jsonl


def test_records_blank_lines_and_unicode_line_separators(tmp_path):
    p = tmp_path / "a.jsonl"
    # U+2028 inside a string is legal JSON that str.splitlines would cut in two
    p.write_text(json.dumps({"t": "one\u2028two"}, ensure_ascii=False) + "\n\n" + '{"t": 2}\n',
                 encoding="utf-8")
    assert read_jsonl(p) == [{"t": "one\u2028two"}, {"t": 2}]


def test_a_bad_line_names_the_file_and_the_line(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_text('{"a": 1}\n{"a": \n{"a": 3}\n', encoding="utf-8")
    for cut_tail_ok in (False, True):   # a bad line in the middle is never a cut tail
        with pytest.raises(ValueError, match=r"b\.jsonl:2: not valid JSON"):
            read_jsonl(p, cut_tail_ok=cut_tail_ok)


def test_a_last_line_cut_by_a_kill_is_dropped_only_when_asked(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo', encoding="utf-8")
    assert read_jsonl(p, cut_tail_ok=True) == [{"step": 1}, {"step": 2}]
    with pytest.raises(ValueError, match=r"metrics\.jsonl:3:"):
        read_jsonl(p)
