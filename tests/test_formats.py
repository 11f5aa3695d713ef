"""Public data formats -> miniworld records: fixtures written here, in each format."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gptlab.data.formats import (FormatError, convert_file, convert_record, detect_format,
                                 load_chat, load_preferences, load_records, load_text)

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}]
PROMPT = [{"role": "user", "content": "Capital of France?"}]


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_messages_format_smoltalk_ultrachat(tmp_path):
    f = _jsonl(tmp_path / "chat.jsonl", [
        {"messages": CHAT, "source": "smoltalk"},
        {"prompt": "Hi", "prompt_id": "x", "messages": [
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey", "extra": 1}]},
    ])
    assert load_chat(f) == [{"messages": CHAT}, {"messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]}]


def test_sharegpt_format(tmp_path):
    f = _jsonl(tmp_path / "sg.jsonl", [{"conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello!"}]}])
    assert load_chat(f) == [{"messages": CHAT}]


def test_ultrafeedback_binarized_message_lists(tmp_path):
    rec = {"prompt": "Capital of France?", "prompt_id": "1",
           "chosen": PROMPT + [{"role": "assistant", "content": "Paris."}],
           "rejected": PROMPT + [{"role": "assistant", "content": "Lyon."}],
           "messages": PROMPT + [{"role": "assistant", "content": "Paris."}],
           "score_chosen": 9.0, "score_rejected": 2.0}
    f = _jsonl(tmp_path / "uf.jsonl", [rec])
    assert detect_format(rec) == "prefs"
    assert load_preferences(f) == [{"prompt": PROMPT, "chosen": "Paris.", "rejected": "Lyon."}]


def test_prefs_with_string_completions_and_trl_conversational(tmp_path):
    f = _jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
        {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "Paris."}],
         "rejected": [{"role": "assistant", "content": "Lyon."}]},
    ])
    want = {"prompt": PROMPT, "chosen": "Paris.", "rejected": "Lyon."}
    assert load_preferences(f) == [want, want]


def test_hh_rlhf_transcripts(tmp_path):
    prefix = "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: Capital of France?"
    f = _jsonl(tmp_path / "hh.jsonl", [
        {"chosen": prefix + "\n\nAssistant: Paris.", "rejected": prefix + "\n\nAssistant: Lyon."}])
    assert load_preferences(f) == [{
        "prompt": [{"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Hello! How can I help?"},
                   {"role": "user", "content": "Capital of France?"}],
        "chosen": "Paris.", "rejected": "Lyon."}]


def test_text_jsonl_parquet_and_custom_field(tmp_path):
    f = _jsonl(tmp_path / "fw.jsonl", [{"text": "one", "id": 1}, {"text": "two", "id": 2}])
    assert load_text(f) == [{"text": "one"}, {"text": "two"}]
    pq.write_table(pa.table({"content": ["a", "b"], "url": ["u", "v"]}), tmp_path / "w.parquet")
    assert load_text(tmp_path / "w.parquet", text_field="content") == [{"text": "a"}, {"text": "b"}]


def test_parquet_chat_and_directory(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    pq.write_table(pa.Table.from_pylist([{"messages": CHAT}]), d / "a.parquet")
    _jsonl(d / "b.jsonl", [{"conversations": [{"from": "human", "value": "Hi"},
                                              {"from": "gpt", "value": "Hello!"}]}])
    assert load_chat(d) == [{"messages": CHAT}, {"messages": CHAT[1:]}]


def test_explicit_format_override(tmp_path):
    f = _jsonl(tmp_path / "t.jsonl", [{"text": "x", "messages": "not a list"}])
    with pytest.raises(FormatError):
        load_records(f)                        # auto-detects "messages"
    assert load_records(f, fmt="text") == [{"text": "x"}]
    with pytest.raises(ValueError, match="format"):
        load_records(f, fmt="alpaca")


def test_convert_file_writes_jsonl(tmp_path):
    src = _jsonl(tmp_path / "sg.jsonl", [{"conversations": [{"from": "human", "value": "Hi"},
                                                            {"from": "gpt", "value": "Yo"}]}])
    assert convert_file(src, tmp_path / "out" / "chat.jsonl") == 1
    line = (tmp_path / "out" / "chat.jsonl").read_text().strip()
    assert json.loads(line) == {"messages": [{"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Yo"}]}


@pytest.mark.parametrize("records, fmt, field, line", [
    ([{"messages": CHAT}, {"messages": [{"role": "wizard", "content": "x"}]}], "auto",
     "messages[0].role", 2),
    ([{"messages": [{"role": "user", "content": 3}]}], "auto", "messages[0].content", 1),
    ([{"text": "ok"}, {"text": "ok"}, {"text": None}], "auto", "text", 3),
    ([{"conversations": [{"from": "alien", "value": "x"}]}], "auto", "conversations[0].from", 1),
    ([{"prompt": "p", "chosen": "a", "rejected": 5}], "auto", "rejected", 1),
    ([{"prompt": "p", "chosen": PROMPT, "rejected": "b"}], "auto", "chosen[0].role", 1),
    ([{"chosen": "Human: hi", "rejected": "\n\nHuman: hi\n\nAssistant: x"}], "auto", "chosen", 1),
    ([{"id": 1}], "auto", "<record>", 1),
    ([{"messages": CHAT}], "text", "text", 1),
])
def test_malformed_record_names_file_line_field(tmp_path, records, fmt, field, line):
    f = _jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(FormatError) as err:
        load_records(f, fmt=fmt)
    e = err.value
    assert isinstance(e, ValueError)
    assert (e.path, e.line, e.field) == (str(f), line, field)
    assert str(f) in str(e) and f"line {line}" in str(e) and field in str(e)


def test_invalid_json_and_wrong_kind(tmp_path):
    f = tmp_path / "broken.jsonl"
    f.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(FormatError, match="line 2"):
        load_text(f)
    chat = _jsonl(tmp_path / "c.jsonl", [{"messages": CHAT}])
    with pytest.raises(FormatError, match="expected prefs"):
        load_preferences(chat)


def test_parquet_error_names_row(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"text": "a"}, {"text": None}]), tmp_path / "x.parquet")
    with pytest.raises(FormatError, match=r"row 2: field 'text'"):
        load_text(tmp_path / "x.parquet")


def test_convert_record_single():
    assert convert_record({"text": "hi"}, "text") == {"text": "hi"}
    with pytest.raises(FormatError, match="'messages'"):
        convert_record({"messages": []}, "messages")


def test_hf_dataset_ids_stream_through_datasets(tmp_path):
    """`hf:` sources go through `datasets` (a hub id where the hub is reachable; here a local
    data dir, the same code path): records convert, and the store imports at most `limit`."""
    import json as _json

    from gptlab.data.formats import FormatError, iter_records
    from gptlab.feedback import FeedbackStore
    data = tmp_path / "prefs"
    data.mkdir()
    rows = [{"prompt": f"Capital of country {i}?", "chosen": f"City {i}.", "rejected": "No idea."}
            for i in range(5)]
    (data / "train.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
    recs = list(iter_records(f"hf:{data}:train", kind="prefs"))
    assert [r["chosen"] for r in recs] == [f"City {i}." for i in range(5)]
    assert recs[0]["prompt"] == [{"role": "user", "content": "Capital of country 0?"}]
    store = FeedbackStore(tmp_path / "f.db")
    assert store.import_file(f"hf:{data}:train", limit=3) == 3
    assert [p["chosen"] for p in store.pairs()] == ["City 0.", "City 1.", "City 2."]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text(_json.dumps({"prompt": "q", "chosen": 3, "rejected": "r"}) + "\n")
    with pytest.raises(FormatError, match="hf:.*bad"):
        list(iter_records(f"hf:{bad}:train", kind="prefs"))
