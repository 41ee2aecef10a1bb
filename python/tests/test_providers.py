"""OpenAI-compatible providers against a real local server
(``python -m rillet.dev.openai_server``, in a process of its own) that answers with the
in-process models: embeddings from MiniLM, labels and summaries by MiniLM embeddings, speech
segments from Silero VAD; with injected 429s, 5xx and slow replies."""

import json
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pyarrow as pa
import pytest

import rillet as rl
from rillet import col


@pytest.fixture(scope="module")
def server():
    process = subprocess.Popen([sys.executable, "-m", "rillet.dev.openai_server", "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    url = process.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    yield url
    process.terminate()
    process.wait(10)


def provider(server, name, **options):
    defaults = {"timeout_s": 10.0, "max_retries": 3, "breaker_failures": 5, "breaker_cooldown_s": 5.0}
    rl.ai.register_provider(name, server, **{**defaults, **options})
    return name


def inject(server, *replies):
    request = urllib.request.Request(server.removesuffix("/v1") + "/_faults",
                                     data=json.dumps({"replies": list(replies)}).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request).read()


def test_embeddings_through_the_provider_are_the_real_model(server):
    p = provider(server, "emb")
    df = rl.from_pydict({"t": ["A man is eating food.", "A man is eating a piece of bread.", None]})
    out = df.select(rl.ai.embed_text("t", "all-minilm-l6-v2", provider=p).alias("v"))
    v = out.to_pydict()["v"]
    assert abs(float(np.dot(v[0], v[1])) - 0.7553) < 1e-3
    assert v[2] is None
    # The same vectors as the in-process operator.
    local = df.select(rl.ai.embed_text("t").alias("v")).to_pydict()["v"]
    assert np.allclose(v[0], local[0], atol=1e-5)


def test_429_waits_for_retry_after_and_5xx_is_retried(server):
    p = provider(server, "flaky")
    inject(server, {"status": 429, "retry_after": "1"}, {"status": 503}, {"status": 500})
    started = time.monotonic()
    out = rl.from_pydict({"t": ["hello"]}).select(
        rl.ai.prompt("{t}", provider=p, model="echo").alias("r")).to_pydict()
    assert out["r"] == ["\n---\nhello"]
    assert time.monotonic() - started >= 1.0  # Retry-After honoured
    stats = rl.ai.provider_stats(p)
    assert stats["rate_limited"] == 1 and stats["retries"] == 2 and stats["failures"] == 0


def test_a_slow_reply_times_out_and_is_retried(server):
    p = provider(server, "slow", timeout_s=0.5)
    inject(server, {"delay_s": 1.5})
    out = rl.from_pydict({"t": ["x"]}).select(
        rl.ai.prompt("{t}", provider=p, model="echo").alias("r")).to_pydict()
    assert out["r"] == ["\n---\nx"]
    assert rl.ai.provider_stats(p)["retries"] == 1


def test_failures_for_good_are_null_with_a_reason_then_the_circuit_opens(server):
    p = provider(server, "down", max_retries=1, breaker_failures=2, breaker_cooldown_s=1.0,
                 max_concurrency=1)
    inject(server, *[{"status": 502}] * 4)
    df = rl.from_pydict({"t": ["a", "b", "c"]})
    out = df.select(rl.ai.prompt("{t}", provider=p, model="echo",
                                 on_error="column").alias("r")).to_pydict()["r"]
    assert [r["value"] for r in out] == [None, None, None]
    reasons = [r["error"] for r in out]
    assert sum("502" in r and "gave up after 1 retries" in r for r in reasons) == 2
    assert sum("circuit open" in r for r in reasons) == 1
    stats = rl.ai.provider_stats(p)
    assert stats["open"] and stats["rejected"] == 1 and stats["failures"] == 2
    with pytest.raises(rl.DataError, match="circuit open"):
        df.select(rl.ai.prompt("{t}", provider=p, model="echo", on_error="raise")).collect()
    time.sleep(1.1)  # cooled down: a trial request goes through and closes the circuit
    out = df.select(rl.ai.prompt("{t}", provider=p, model="echo").alias("r")).to_pydict()
    assert out["r"] == ["\n---\na", "\n---\nb", "\n---\nc"]
    assert not rl.ai.provider_stats(p)["open"]


def test_a_4xx_is_not_retried_and_says_why(server):
    p = provider(server, "strict")
    out = rl.from_pydict({"t": ["x"]}).select(
        rl.ai.embed_text("t", "no-such-model", provider=p, dimensions=3,
                         on_error="column").alias("v")).to_pydict()["v"]
    assert out[0]["value"] is None
    assert "404" in out[0]["error"] and "no-such-model" in out[0]["error"]
    assert rl.ai.provider_stats(p)["retries"] == 0


def test_the_api_key_comes_from_the_environment(server, monkeypatch):
    p = provider(server, "keyed", api_key_env="RILLET_TEST_KEY")
    monkeypatch.delenv("RILLET_TEST_KEY", raising=False)
    out = rl.from_pydict({"t": ["x"]}).select(
        rl.ai.prompt("{t}", provider=p, model="echo", on_error="column").alias("r")).to_pydict()
    assert "RILLET_TEST_KEY is not set" in out["r"][0]["error"]
    monkeypatch.setenv("RILLET_TEST_KEY", "secret")
    out = rl.from_pydict({"t": ["x"]}).select(
        rl.ai.prompt("{t}", provider=p, model="echo").alias("r")).to_pydict()
    assert out["r"] == ["\n---\nx"]


def test_an_unknown_provider_is_a_plan_error_naming_how_to_register():
    with pytest.raises(rl.PlanError, match="register_provider"):
        rl.from_pydict({"t": ["x"]}).select(rl.ai.prompt("{t}", provider="nobody", model="m"))


def test_prompt_templates_over_columns_and_json_mode(server):
    p = provider(server, "tmpl")
    df = rl.from_pydict({"title": ["Dune"], "year": [1965]})
    out = df.select(
        rl.ai.prompt("Book {title} ({year}), {{braces}}", provider=p, model="echo",
                     system="Be brief.").alias("r"),
        rl.ai.prompt("{title}", provider=p, model="other", json=True).alias("j"),
    ).to_pydict()
    assert out["r"] == ["Be brief.\n---\nBook Dune (1965), {braces}"]
    assert json.loads(out["j"][0]) == {"text": "Dune"}
    with pytest.raises(ValueError, match="name a column"):
        rl.ai.prompt("{title:>10}", provider=p, model="echo")


def test_sentiment_classify_extract_summarize_translate(server):
    p = provider(server, "tasks")
    m = "all-minilm-l6-v2"
    df = rl.from_pydict({
        "review": ["What a wonderful, delightful film. I loved it.",
                   "Awful. Boring plot and terrible acting, a waste of money."],
        "note": ["Patient name: Ada Lovelace, age: 36, city: London.",
                 "The striker scored twice in the final. Fans cheered. Tickets sold out."],
    })
    out = df.select(
        rl.ai.sentiment("review", provider=p, model=m).alias("s"),
        rl.ai.classify_text("note", ["sports", "medicine"], m, provider=p).alias("c"),
        rl.ai.extract("note", ["name", "age", "city"], provider=p, model=m).alias("x"),
        rl.ai.summarize("note", provider=p, model=m, max_words=5).alias("sum"),
        rl.ai.translate("review", "French", provider=p, model="echo").alias("tr"),
    ).to_pydict()
    assert out["s"] == ["positive", "negative"]
    assert out["c"] == ["medicine", "sports"]
    assert out["x"][0] == {"name": "Ada Lovelace", "age": "36", "city": "London"}
    assert out["x"][1] == {"name": None, "age": None, "city": None}
    assert all(len(s.split()) <= 5 for s in out["sum"])
    assert out["sum"][1].startswith("The striker scored twice")
    assert out["tr"][0].startswith("Translate the user's text into French.")
    assert out["tr"][0].endswith("I loved it.")


def test_classify_image_sends_each_image_inline_to_a_vision_model(server, tmp_path):
    import io

    from PIL import Image

    from rillet.dev import datasets

    photos = {p.name: p for p in datasets.sample_photos()}
    p = provider(server, "vision")
    # The server's "vision" is the NudeNet detector: a face makes the photo one "of people".
    names = ["astronaut.png", "camera.png", "chelsea.png", "coffee.png"]
    out = rl.from_pydict({"path": [str(photos[n]) for n in names]}).select(
        rl.ai.classify_image(col("path"), ["people", "no people"], provider=p,
                             model="vision").alias("c")).to_pydict()
    assert out["c"] == ["people", "people", "no people", "no people"]

    # What arrives: large images shrunk to max_side, alpha kept (sent as PNG), decoded
    # Image columns and encoded bytes alike; unreadable bytes are null with a reason.
    big = Image.open(photos["astronaut.png"]).convert("RGB").resize((1600, 1200))
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 128))
    blobs = []
    for image, fmt in ((big, "JPEG"), (rgba, "PNG")):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        blobs.append(buffer.getvalue())
    df = rl.from_pydict({"b": blobs + [b"not an image"]})
    out = df.select(
        rl.ai.classify_image(col("b"), ["cat", "dog"], provider=p, model="echo", max_side=800,
                             on_error="column").alias("raw"),
        rl.ai.classify_image(col("b").image.decode(), ["cat", "dog"], provider=p, model="echo",
                             on_error="column").alias("decoded"),
    ).to_pydict()
    # echo's reply repeats the system message, naming both labels, so each row is an
    # error quoting the reply: what the server saw.
    first, second, bad = out["raw"]
    assert "[image 800x600]" in first["error"], first
    assert "[image 40x30]" in second["error"], second
    assert bad["value"] is None and "names none of the labels" not in bad["error"], bad
    assert "[image 1024x768]" in out["decoded"][0]["error"]
    assert out["decoded"][2]["value"] is None

    with pytest.raises(ValueError, match="CLIP"):
        rl.ai.classify_image(col("b"), ["x"])


def test_transcribe_sends_each_clip_as_wav(server, tmp_path):
    import shutil

    from servers import REQUIRE_SERVERS
    if not shutil.which("espeak-ng") and not REQUIRE_SERVERS:
        pytest.skip("espeak-ng is not installed")
    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "Hello there, this is a test of speech."],
                   check=True)
    p = provider(server, "asr")
    out = rl.from_pydict({"path": [str(wav)]}).select(
        rl.ai.transcribe(col("path").audio.decode(), provider=p, model="whisper-1").alias("t"),
        rl.ai.detect_speech(col("path").audio.decode().audio.resample(16000)).alias("vad"),
    ).to_pydict()
    # The server ran Silero VAD on what it received: the same segments as in-process.
    expected = " ".join(f"speech {r['start_ms'] / 1000:.2f}-{r['end_ms'] / 1000:.2f}"
                        for r in out["vad"][0])
    assert out["t"] == [expected] and expected.startswith("speech ")


def test_rows_of_a_batch_are_sent_concurrently(server):
    p = provider(server, "parallel", max_concurrency=8)
    inject(server, *[{"delay_s": 0.5}] * 8)
    started = time.monotonic()
    out = rl.from_pydict({"t": [str(i) for i in range(8)]}).select(
        rl.ai.prompt("{t}", provider=p, model="echo").alias("r")).to_pydict()
    assert out["r"] == [f"\n---\n{i}" for i in range(8)]
    assert time.monotonic() - started < 2.0  # 8 slow replies overlapped, not 4 s in a row


def server_stats(server):
    with urllib.request.urlopen(server.removesuffix("/v1") + "/_stats") as reply:
        return json.loads(reply.read())


@pytest.mark.parametrize("retry_after", ["1e20", "inf", "3600"])
def test_a_retry_after_too_long_to_wait_is_a_null_with_a_reason(server, retry_after):
    p = provider(server, "hostile", max_rate_limit_wait_s=30.0)
    inject(server, {"status": 429, "retry_after": retry_after})
    started = time.monotonic()
    df = rl.from_pydict({"t": ["x"]})
    out = df.select(rl.ai.prompt("{t}", provider=p, model="echo", on_error="column").alias("r"))
    r = out.to_pydict()["r"][0]
    assert r["value"] is None
    assert "Retry-After" in r["error"] and "max_rate_limit_wait_s" in r["error"], r["error"]
    assert time.monotonic() - started < 5.0
    # The process lives on and the provider answers the next call.
    assert df.select(rl.ai.prompt("{t}", provider=p, model="echo").alias("r")).to_pydict()["r"] == ["\n---\nx"]


def test_429s_are_waited_out_a_bounded_number_of_times(server):
    p = provider(server, "throttled", max_rate_limited=2)
    inject(server, *[{"status": 429, "retry_after": "0"}] * 3)
    out = rl.from_pydict({"t": ["x"]}).select(
        rl.ai.prompt("{t}", provider=p, model="echo", on_error="column").alias("r")).to_pydict()["r"]
    assert out[0]["value"] is None
    assert "still rate limited (429) after waiting 2 times" in out[0]["error"], out[0]["error"]
    stats = rl.ai.provider_stats(p)
    assert stats["rate_limited"] == 2 and not stats["open"]
    with pytest.raises(ValueError, match="max_rate_limit_wait_s must be a finite number"):
        provider(server, "bad", max_rate_limit_wait_s=float("inf"))


def test_requests_that_failed_together_retry_apart(server):
    p = provider(server, "herd", max_concurrency=16, max_retries=1)
    rows = [f"herd-row-{i}" for i in range(16)]
    inject(server, *[{"status": 503, "match": f'"{row}"'} for row in rows])
    out = rl.from_pydict({"t": rows}).select(
        rl.ai.prompt("{t}", provider=p, model="echo").alias("r")).to_pydict()
    assert out["r"] == [f"\n---\n{row}" for row in rows]
    arrivals = server_stats(server)["arrivals"]
    gaps = []
    for row in rows:
        times = [t for t, path, body in arrivals if f'"{row}"' in body]
        assert len(times) == 2, (row, times)
        gaps.append(times[1] - times[0])
    # A backoff of 100 ms drawn from 50-100 ms: the 16 retries spread over tens of ms, and
    # some come back well before 100 ms, which without jitter none can.
    assert max(gaps) - min(gaps) > 0.02, gaps
    assert 0.045 <= min(gaps) < 0.095, gaps


def test_a_reply_of_the_wrong_shape_is_a_null_with_a_reason(server):
    p = provider(server, "broken")
    inject(server, {"status": 200, "body": {"data": [{"index": 0, "embedding": [0.1, "x", 0.3]}]}})
    out = rl.from_pydict({"t": ["a"]}).select(
        rl.ai.embed_text("t", "all-minilm-l6-v2", provider=p, dimensions=3,
                         on_error="column").alias("v")).to_pydict()["v"]
    assert out[0]["value"] is None and "not the reply expected" in out[0]["error"], out[0]
    inject(server, {"status": 200, "body": {"choices": []}},
           {"status": 200, "body": {"choices": [{"message": {"content": None}}]}})
    out = rl.from_pydict({"t": ["a", "b"]}).select(
        rl.ai.prompt("{t}", provider=p, model="echo", on_error="column").alias("r")).to_pydict()["r"]
    assert [r["value"] for r in out] == [None, None]
    assert all("no choices[0].message.content" in r["error"] for r in out), out
