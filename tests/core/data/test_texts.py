"""Reading the user's text files: every format, the WikiText convention, and every bad file."""

import json

import pytest

from core.errors import UserError
from core.data.texts import read_rows, read_text, sha256_of

ROWS = ["First document, with a comma.", "Second one\nspans two lines.", "Third: \"quoted\" ünïcode ✓"]


def test_plain_text_and_markdown_are_read_whole(tmp_path):
    for suffix in (".txt", ".md"):
        path = tmp_path / f"doc{suffix}"
        path.write_text("# Title\n\n" + "\n\n".join(ROWS) + "\n", encoding="utf-8")
        assert read_text(path) == path.read_text(encoding="utf-8")


def test_wikitext_raw_rows_rebuild_the_papers_evaluation_string(wiki_dir):
    path = wiki_dir / "wiki.test.raw"
    text = read_text(path)
    assert len(text) == 1_294_336 and len(text.encode("utf-8")) == 1_296_370     # SOURCE.md
    rows = read_rows(path)
    assert len(rows) == 4358 and rows[0] == "" and rows[1] == " = Robert Boulter = \n"
    assert "" in rows[2:] and " \n" not in rows          # blank rows are empty again, as in the Hugging Face split
    assert text == "\n\n".join(l if l.strip() else "" for l in path.read_text(encoding="utf-8").splitlines(keepends=True))


def test_json_lines_json_list_csv_and_parquet_with_a_chosen_field(tmp_path):
    records = [{"id": i, "body": row} for i, row in enumerate(ROWS)]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    listed = tmp_path / "d.json"
    listed.write_text(json.dumps(records, indent=2))
    csv_file = tmp_path / "d.csv"
    import csv

    with open(csv_file, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "body"])
        writer.writeheader()
        writer.writerows(records)
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": [r["id"] for r in records], "body": ROWS}), parquet)
    for path in (jsonl, listed, csv_file, parquet):
        assert read_rows(path, "body") == ROWS, path.name
        assert read_text(path, "body") == "\n\n".join(ROWS)


def test_default_field_is_text(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": r}) for r in ROWS))
    assert read_rows(path) == ROWS


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_a_missing_field_names_the_fields_found(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    records = [{"title": "a", "content": "b"}]
    if suffix == ".jsonl":
        path.write_text(json.dumps(records[0]) + "\n")
    elif suffix == ".json":
        path.write_text(json.dumps(records))
    elif suffix == ".csv":
        path.write_text("title,content\na,b\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"title": ["a"], "content": ["b"]}), path)
    with pytest.raises(UserError, match=r"'text'.*found: title, content"):
        read_rows(path)


@pytest.mark.parametrize("name,content,expected", [
    ("bin.txt", b"\x00\x01\x02binary\x00", "looks binary"),
    ("latin1.txt", "café crème".encode("latin-1"), "not UTF-8"),
    ("broken.jsonl", b'{"text": "ok"}\n{"text": \n', "line 2 is not valid JSON"),
    ("broken.json", b'[{"text": "ok"},', "invalid JSON"),
    ("table.parquet", b"PAR1 not really", "not a readable Parquet file"),
    ("image.png", b"\x89PNG", "unsupported file type .png"),
])
def test_bad_files_say_what_is_wrong(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=expected):
        read_text(path)


def test_a_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_text(tmp_path / "nope.txt")


def test_sha256_of_a_file(tmp_path):
    import hashlib

    path = tmp_path / "a.txt"
    path.write_bytes(b"abc" * 1000)
    assert sha256_of(path, chunk=7) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_a_json_file_holding_one_record_or_json_lines(tmp_path):
    single = tmp_path / "one.json"
    single.write_text(json.dumps({"text": ROWS[1], "id": 1}, indent=2))
    assert read_rows(single) == [ROWS[1]]
    lines = tmp_path / "lines.json"
    lines.write_text("\n".join(json.dumps({"text": r}) for r in ROWS))
    assert read_rows(lines) == ROWS
    broken = tmp_path / "broken.json"
    broken.write_text('{"text": "a"}\n{"text": oops}\n')
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        read_rows(broken)


def test_csv_with_long_documents_and_any_line_endings(tmp_path):
    long_row = "word " * 40_000                      # 200,000 characters: over the csv module's default field limit
    path = tmp_path / "long.csv"
    path.write_text(f'id,text\n1,"{long_row}"\n2,short\n')
    assert read_rows(path) == [long_row, "short"]
    old_mac = tmp_path / "cr.csv"
    old_mac.write_bytes(b'text,id\r"two\r\nlines",1\rplain,2\r')
    assert read_rows(old_mac) == ["two\r\nlines", "plain"]
