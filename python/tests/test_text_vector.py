"""Text and vector operators against Python / numpy references, on real English text
(Debian's documentation when present) and random vectors."""

from __future__ import annotations

import glob
import gzip
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rillet as rl
from rillet import col


def _debian_docs(limit: int = 40) -> list[str]:
    texts = []
    for path in sorted(glob.glob("/usr/share/doc/*/copyright"))[:limit]:
        try:
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())
        except (OSError, UnicodeDecodeError):
            continue
    for path in sorted(glob.glob("/usr/share/doc/*/changelog.Debian.gz"))[:10]:
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            texts.append(f.read())
    return texts


@pytest.fixture(scope="module")
def docs():
    texts = _debian_docs()
    if len(texts) < 5:  # a minimal container: fall back to generated prose
        texts = [" ".join(f"word{i % 97} line{i}." for i in range(n * 50)) for n in range(1, 20)]
    return texts


# Whitespace is Unicode White_Space; Python's str.split also splits on the ASCII
# separators U+001C..U+001F, so leave those out of the comparison.
# Any text Arrow can hold: UTF-8 cannot encode lone surrogates (category Cs). Code points
# unassigned in Python's Unicode database (Cn) are left out too: Rillet's tables are a newer
# Unicode version, which decomposes characters added since (U+1B123 -> こと under NFKC), so
# the reference cannot judge them.
_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cn"), blacklist_characters="\x1c\x1d\x1e\x1f"),
                max_size=60)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), _TEXT), min_size=1, max_size=20),
       st.sampled_from(["NFC", "NFD", "NFKC", "NFKD"]), st.booleans())
def test_normalize_matches_unicodedata(texts, form, lower):
    out = rl.from_pydict({"t": pa_strings(texts)}).select(
        col("t").text.normalize(form=form, lowercase=lower).alias("n")).to_pydict()["n"]
    expected = []
    for t in texts:
        if t is None:
            expected.append(None)
            continue
        s = unicodedata.normalize(form, t)
        s = s.lower() if lower else s
        expected.append(" ".join(s.split()))
    assert out == expected


def pa_strings(values):
    import pyarrow as pa
    return pa.array(values, type=pa.string())


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200), st.integers(1, 30), st.data())
def test_char_chunks_cover_the_text(text, size, data):
    overlap = data.draw(st.integers(0, size - 1))
    chunks = rl.from_pydict({"t": pa_strings([text])}).select(
        col("t").text.chunk(size, overlap).alias("c")).to_pydict()["c"][0]
    step = size - overlap
    expected = []
    for start in range(0, len(text), step):
        expected.append(text[start:start + size])
        if start + size >= len(text):
            break
    assert chunks == expected


def test_chunk_explodes_into_rows_with_parent_identity(docs):
    df = rl.from_pydict({"doc": list(range(len(docs))), "t": docs})
    rows = (df.with_column("chunk", col("t").text.chunk(200, 20, unit="words"))
              .explode("chunk").select("doc", "chunk").to_pylist())
    by_doc: dict[int, list[str]] = {}
    for r in rows:
        by_doc.setdefault(r["doc"], []).append(r["chunk"])
    for i, text in enumerate(docs):
        words = text.split()
        if not words:
            continue
        assert all(len(c.split()) <= 200 for c in by_doc[i])
        assert by_doc[i][0].split() == words[:200]


def test_stats_match_python(docs):
    out = rl.from_pydict({"t": docs}).select(col("t").text.stats().alias("s")).to_pydict()["s"]
    for text, s in zip(docs, out):
        n = len(text)
        assert s["chars"] == n
        assert s["words"] == len(text.split())
        assert s["lines"] == len(text.splitlines())
        # Unicode Alphabetic (Rust) and str.isalpha (Python) differ on a few marks.
        assert s["alpha_ratio"] == pytest.approx(sum(c.isalpha() for c in text) / n, abs=0.01)
        assert s["whitespace_ratio"] == pytest.approx(sum(c.isspace() for c in text) / n, abs=0.02)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        dup = (len(lines) - len(set(lines))) / len(lines)
        assert s["duplicate_line_ratio"] == pytest.approx(dup)


def test_hashes_find_exact_and_near_duplicates(docs):
    base = docs[0]
    near = base.replace("the", "teh", 1) if "the" in base else base + " extra"
    texts = [base, base, near, docs[1]]
    out = rl.from_pydict({"t": texts}).select(
        col("t").text.content_hash().alias("h"), col("t").text.minhash(128, 3).alias("m")).to_pydict()
    h, m = out["h"], [np.asarray(x) for x in out["m"]]
    assert h[0] == h[1] and len({h[0], h[2], h[3]}) == 3
    assert (m[0] == m[1]).all()
    assert (m[0] == m[2]).mean() > 0.8
    assert (m[0] == m[3]).mean() < 0.3


def test_mask_pii_and_sql():
    t = rl.from_pydict({"t": ["write to jane.doe@example.org or 192.168.1.20", "card 5555 5555 5555 4444 ok", None]})
    masked = t.select(col("t").text.mask_pii(["email", "ip", "card"]).alias("m")).to_pydict()["m"]
    assert masked == ["write to [EMAIL] or [IP]", "card [CARD] ok", None]
    out = rl.sql("SELECT text_mask_pii(t, 'email') AS m FROM t", t=t).to_pydict()["m"]
    assert out[0] == "write to [EMAIL] or 192.168.1.20"
    with pytest.raises(rl.PlanError, match="unknown PII kind"):
        t.select(col("t").text.mask_pii(["ssn"]))


def test_vector_metrics_match_numpy():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(50, 16)).astype(np.float32)
    b = rng.normal(size=(50, 16)).astype(np.float32)
    df = rl.from_pydict({"a": list(a), "b": list(b)})
    assert str(df.schema.field("a").type) == "Embedding[f32; 16]"
    out = df.select(
        col("a").vector.cosine_similarity(col("b")).alias("cos"),
        col("a").vector.dot(col("b")).alias("dot"),
        col("a").vector.l2_distance(col("b")).alias("l2"),
        col("a").vector.normalize().alias("unit"),
        col("a").vector.cosine_similarity([1.0] + [0.0] * 15).alias("to_axis"),
    ).to_pydict()
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = (a64 * b64).sum(1) / np.linalg.norm(a64, axis=1) / np.linalg.norm(b64, axis=1)
    np.testing.assert_allclose(out["cos"], cos, rtol=1e-9)
    np.testing.assert_allclose(out["dot"], (a64 * b64).sum(1), rtol=1e-9)
    np.testing.assert_allclose(out["l2"], np.linalg.norm(a64 - b64, axis=1), rtol=1e-9)
    np.testing.assert_allclose([np.linalg.norm(u) for u in out["unit"]], 1.0, rtol=1e-6)
    np.testing.assert_allclose(out["to_axis"], a64[:, 0] / np.linalg.norm(a64, axis=1), rtol=1e-9)


def test_vector_length_mismatch_and_wrong_type_are_errors():
    # Comparing vectors of different dimensions is a mistake, not bad data: an error
    # naming the row, never a null.
    df = rl.from_pydict({"a": [[1.0, 2.0], [1.0]], "b": [[1.0, 2.0], [1.0, 2.0]]})
    with pytest.raises(rl.DataError, match=r"vector_dot: the dimensions differ on row 1 \(1 and 2\)"):
        df.select(col("a").vector.dot(col("b")).alias("d")).to_pydict()
    nulls = rl.from_pydict({"a": [[1.0, 2.0], None], "b": [[1.0, 2.0], [1.0, 2.0]]})
    assert nulls.select(col("a").vector.dot(col("b")).alias("d")).to_pydict()["d"] == [5.0, None]
    with pytest.raises(rl.PlanError, match="must be vectors"):
        rl.from_pydict({"n": [1]}).select(col("n").vector.normalize())


_SENTENCES = {
    "eng": "The committee will publish its final report on the new railway line next spring.",
    "fra": "Le comité publiera son rapport final sur la nouvelle ligne de chemin de fer au printemps prochain.",
    "deu": "Der Ausschuss wird seinen Abschlussbericht über die neue Bahnstrecke im nächsten Frühjahr veröffentlichen.",
    "spa": "El comité publicará su informe final sobre la nueva línea de ferrocarril la próxima primavera.",
    "rus": "Комитет опубликует свой окончательный доклад о новой железнодорожной линии следующей весной.",
}


def test_language_identifies_sentences_and_real_text():
    from rillet.dev.datasets import sample_texts

    df = rl.from_pydict({"t": list(_SENTENCES.values()) + ["", None, "12345 !!!"]})
    out = df.select(col("t").text.language().alias("l")).to_pydict()["l"]
    assert [o["language"] for o in out[:5]] == list(_SENTENCES)
    assert all(0 < o["confidence"] <= 1 for o in out[:5])
    assert out[5] is None and out[6] is None and out[7] is None
    prose = [p.read_text() for p in sample_texts()]
    langs = rl.from_pydict({"t": prose}).select(col("t").text.language().alias("l")).to_pydict()["l"]
    assert all(l["language"] == "eng" for l in langs)


def test_drop_duplicates_by_subset_and_by_content_hash():
    df = rl.from_pydict({"k": ["a", "b", "a", "c", "b"], "v": [1, 2, 1, 3, 2]})
    assert df.drop_duplicates().sort("k").to_pydict() == {"k": ["a", "b", "c"], "v": [1, 2, 3]}
    assert df.drop_duplicates("k").count() == 3
    texts = rl.from_pydict({"t": ["same text", "other", "same text"], "id": [1, 2, 3]})
    hashed = texts.with_column("h", col("t").text.content_hash()).drop_duplicates("h")
    assert sorted(hashed.to_pydict()["t"]) == ["other", "same text"]
    with pytest.raises(rl.PlanError, match="nope"):
        df.drop_duplicates(["nope"])


def test_drop_near_duplicates_matches_brute_force_jaccard():
    from rillet.dev.datasets import sample_texts

    rng = np.random.default_rng(3)
    base = [w for p in sample_texts() for w in p.read_text().split()]
    assert len(base) >= 60 * 40 + 60
    docs, truth_dups = [], set()
    for i in range(60):
        words = base[i * 40: i * 40 + 60]
        docs.append(" ".join(words))
        if i % 3 == 0:  # a near copy: one word changed near the end
            copy = list(words)
            copy[-2] = "CHANGED"
            docs.append(" ".join(copy))
            truth_dups.add(len(docs) - 1)
    order = rng.permutation(len(docs))
    shuffled = [docs[i] for i in order]
    kept = rl.from_pydict({"t": shuffled}).drop_near_duplicates("t", threshold=0.8, num_perm=128, ngram=3).to_pydict()["t"]

    def shingles(text):
        w = text.split()
        return {tuple(w[i:i + 3]) for i in range(len(w) - 2)}

    # Brute force: every kept pair is below the threshold, and every dropped text has a kept
    # near copy at or above it (allowing MinHash's estimation error around the threshold).
    kept_sets = [shingles(t) for t in kept]
    for i in range(len(kept_sets)):
        for j in range(i):
            a, b = kept_sets[i], kept_sets[j]
            assert len(a & b) / len(a | b) < 0.8
    assert len(kept) == len(docs) - len(truth_dups)
