"""Tokenization (a real Hugging Face tokenizer.json checked against the ``tokenizers``
package, and OpenAI's built-in BPE encodings) and PDF pages and text (documents made with
fpdf2, checked against pypdf), with bad input."""

from __future__ import annotations

import pyarrow as pa
import pytest

import rillet as rl
from rillet import col
from rillet.dev.datasets import sample_texts, sample_tokenizer

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "Rillet reads images, audio, video and documents; déjà vu, naïve café — 東京タワー!",
    "",
    None,
]


@pytest.fixture(scope="module")
def prose():
    return [p.read_text(encoding="utf-8") for p in sample_texts()[:8]]


def test_hugging_face_tokenizer_matches_the_tokenizers_package(prose):
    tokenizers = pytest.importorskip("tokenizers")
    path = sample_tokenizer()
    reference = tokenizers.Tokenizer.from_file(str(path))
    reference.no_padding()
    reference.no_truncation()
    texts = SENTENCES + prose
    for special in (False, True):
        out = rl.from_pydict({"t": texts}).select(
            col("t").text.tokenize(str(path), add_special_tokens=special).alias("ids"),
            col("t").text.count_tokens(str(path), add_special_tokens=special).alias("n")).to_pydict()
        for text, ids, n in zip(texts, out["ids"], out["n"]):
            if text is None:
                assert ids is None and n is None
                continue
            expected = reference.encode(text, add_special_tokens=special).ids
            assert ids == expected and n == len(expected)
    # A long document really is long: no padding or truncation to the model's 128.
    assert max(rl.from_pydict({"t": prose}).select(col("t").text.count_tokens(str(path)).alias("n")).to_pydict()["n"]) > 512
    # The directory holding tokenizer.json works too, and so does SQL.
    q = rl.sql(f"SELECT text_count_tokens(t, '{path.parent}') AS n FROM d", d=rl.from_pydict({"t": ["hello world"]}))
    assert q.to_pydict()["n"] == [2]


def test_builtin_bpe_encodings():
    df = rl.from_pydict({"t": ["tiktoken is great!", "hello world", "<|endoftext|>"]})
    out = df.select(col("t").text.tokenize("cl100k_base").alias("c"),
                    col("t").text.tokenize("cl100k_base", add_special_tokens=True).alias("s"),
                    col("t").text.count_tokens().alias("o"),
                    col("t").text.tokenize("o200k_base").alias("o_ids"),
                    col("t").text.count_tokens("gpt-4").alias("g")).to_pydict()
    # Published examples of cl100k_base (OpenAI's tiktoken documentation).
    assert out["c"][0] == [83, 1609, 5963, 374, 2294, 0]
    assert out["c"][1] == [15339, 1917]
    # Special-token text is plain text unless asked for; gpt-4 uses cl100k_base.
    assert len(out["c"][2]) > 1 and out["s"][2] == [100257]
    assert out["g"] == [len(ids) for ids in out["c"]]
    # o200k_base is the default, and a different vocabulary.
    assert out["o"] == [len(ids) for ids in out["o_ids"]] and out["o"][1] == 2
    assert out["o_ids"][0] != out["c"][0]


def test_unknown_tokenizer_is_a_plan_error():
    df = rl.from_pydict({"t": ["x"]})
    with pytest.raises(rl.PlanError, match="unknown tokenizer"):
        df.select(col("t").text.count_tokens("no-such-tokenizer"))
    with pytest.raises(rl.PlanError, match="must be a string column"):
        rl.from_pydict({"t": [1]}).select(col("t").text.tokenize())


def _pdf(pages: list[str]) -> bytes:
    fpdf = pytest.importorskip("fpdf")
    doc = fpdf.FPDF()
    doc.set_font("Helvetica", size=14)
    for text in pages:
        doc.add_page()
        doc.multi_cell(0, 10, text)
    return bytes(doc.output())


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    root = tmp_path_factory.mktemp("pdf")
    docs = {
        "report.pdf": ["Quarterly report. Revenue grew by 12 percent.", "Second page: costs fell.",
                       "Third page with the outlook for next year."],
        "memo.pdf": ["A one page memo about the offsite."],
    }
    paths = {}
    for name, pages in docs.items():
        (root / name).write_bytes(_pdf(pages))
        paths[name] = root / name
    return root, docs, paths


def _words(text: str) -> list[str]:
    return text.split()


def test_pdf_page_count_text_and_pages_match_pypdf(documents):
    pypdf = pytest.importorskip("pypdf")
    root, docs, paths = documents
    files = rl.read_files(str(root / "*.pdf")).sort("path")
    out = files.select("path", col("file").pdf.page_count().alias("n"), col("file").pdf.text().alias("t")).to_pydict()
    for path, n, text in zip(out["path"], out["n"], out["t"]):
        reader = pypdf.PdfReader(path)
        assert n == len(reader.pages)
        assert _words(text) == [w for page in reader.pages for w in _words(page.extract_text())]
        assert text.count("\f") == n - 1
    # One row per page, keeping the parent's columns.
    pages = (files.select("path", col("file").pdf.pages().alias("p")).explode("p")
             .select("path", col("p")["page"].alias("page"), col("p")["text"].alias("text")).to_pydict())
    assert len(pages["page"]) == sum(len(p) for p in docs.values())
    for path, page, text in zip(pages["path"], pages["page"], pages["text"]):
        expected = docs[path.rsplit("/", 1)[1]][page - 1]
        assert _words(text) == _words(expected)


def test_pdf_bytes_sql_and_bad_documents(documents, tmp_path):
    _, docs, paths = documents
    good = paths["memo.pdf"].read_bytes()
    bad = {
        "empty": b"",
        "not a pdf": b"hello, not a document",
        "truncated": good[: len(good) // 3],
        "garbage body": good[:20] + bytes(range(256)) * 8,
    }
    df = rl.from_pydict({"name": ["good", *bad], "b": [good, *bad.values()]})
    out = df.select("name", col("b").pdf.text(on_error="column").alias("t"),
                    col("b").pdf.page_count().alias("n")).to_pydict()
    assert _words(out["t"][0]["value"]) == _words(docs["memo.pdf"][0]) and out["n"][0] == 1
    for name, t, n in zip(out["name"][1:], out["t"][1:], out["n"][1:]):
        assert t["value"] is None and t["error"], name
        assert n is None, name
    # pdf-extract panics on an unknown font encoding name (found by scripts/fuzz.sh): the
    # operator contains the panic and reports it as this row's problem.
    assert b"/WinAnsiEncoding" in good
    odd = good.replace(b"/WinAnsiEncoding", b"/WinAnsiEncodini")
    out = rl.from_pydict({"b": [odd, good]}).select(col("b").pdf.text(on_error="column").alias("t")).to_pydict()["t"]
    assert out[0]["value"] is None and "unexpected encoding" in out[0]["error"]
    assert _words(out[1]["value"]) == _words(docs["memo.pdf"][0])
    with pytest.raises(rl.DataError):
        df.filter(col("name") == "not a pdf").select(col("b").pdf.text(on_error="raise")).collect()
    q = rl.sql("SELECT pdf_page_count(p) AS n FROM d", d=rl.from_pydict({"p": [str(paths["report.pdf"])]}))
    assert q.to_pydict()["n"] == [3]
