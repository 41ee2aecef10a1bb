"""A local server that speaks the OpenAI HTTP API, answering with Rillet's in-process models.

    python -m rillet.dev.openai_server --port 8000      # prints its base URL, .../v1

It exists so that providers can be developed and tested without the internet, against real
models, and it can inject the failures a real provider has (429 with ``Retry-After``, 5xx,
slow replies):

- ``POST /v1/embeddings``: real sentence embeddings from any embedding model of
  :mod:`rillet.models` (``all-minilm-l6-v2``, ``paraphrase-minilm-l3-v2``).
- ``POST /v1/chat/completions``: there is no generative model offline, so this is *not* an
  LLM. It answers the tasks Rillet's AI functions ask for with real models where one fits:
  a label from a list (zero-shot by MiniLM embeddings), a summary (the text's most central
  sentence by MiniLM embeddings, cut to the word limit), extraction of fields (``name: value``
  pairs found in the text, as a JSON object). The model ``echo`` replies with the system
  and user messages it got, to check what a client sends.
  Images in a user message (``image_url`` parts with ``data:`` URLs) are "seen" by the
  NudeNet detector: the image becomes the sentence "A photo showing: face female, ..."
  (or "A photo with no people in it."), which the text tasks above then answer, so an image
  label is chosen by real models. ``echo`` replies ``[image WxH]`` for each image.
- ``POST /v1/audio/transcriptions``: there is no speech recogniser offline either; the reply
  text lists the speech segments Silero VAD finds (``speech 0.51-1.86``), which proves the
  audio arrived intact.
- ``POST /_faults`` with ``{"replies": [{"status": 429, "retry_after": "1"}, {"status": 503},
  {"delay_s": 3}, {"status": 200, "body": {"data": "not a list"}}]}`` queues faults that
  the next ``/v1`` requests get, one each, in order (``body`` is replied as it is, as a
  broken provider might; a fault with ``"match": "text"`` waits for a request whose body
  holds that text); ``GET /_stats`` counts the requests seen per path and lists when each
  arrived (``arrivals``: seconds on the server's monotonic clock, the path, and the first
  200 bytes of the request body).
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import io
import json
import re
import sys
import threading
import time
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EMBEDDING_MODELS = ("all-minilm-l6-v2", "paraphrase-minilm-l3-v2")
# The model that answers chat tasks with embeddings.
CHAT_ENCODER = "all-minilm-l6-v2"


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.faults: list[dict[str, Any]] = []
        self.seen: dict[str, int] = {}
        self.arrivals: list[tuple[float, str, str]] = []

    def next_fault(self, path: str, body: bytes) -> dict[str, Any] | None:
        with self.lock:
            self.seen[path] = self.seen.get(path, 0) + 1
            text = body.decode("utf-8", "replace")
            self.arrivals.append((time.monotonic(), path, text[:200]))
            for i, fault in enumerate(self.faults):
                if fault.get("match", "") in text:
                    return self.faults.pop(i)
            return None


def _embed(texts: list[str], model: str) -> list[list[float]]:
    import rillet as rl

    df = rl.from_pydict({"t": texts}).select(rl.ai.embed_text("t", model).alias("v"))
    return [[float(x) for x in v] for v in df.to_pydict()["v"]]


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def _answer_chat(model: str, system: str, user: str, json_mode: bool) -> str:
    if model == "echo":
        return f"{system}\n---\n{user}"
    labels = re.search(r"exactly one of these labels and nothing else: (.+?)\.(\s|$)", system)
    if labels:
        import rillet as rl

        options = [label.strip() for label in labels.group(1).split(",")]
        df = rl.from_pydict({"t": [user]}).select(
            rl.ai.classify_text("t", options, CHAT_ENCODER, template="{}").alias("c"))
        return df.to_pydict()["c"][0]["label"]
    limit = re.search(r"in at most (\d+) words", system)
    if limit and "Summarise" in system:
        sentences = _sentences(user) or [user]
        vectors = _embed([user] + sentences, CHAT_ENCODER)
        whole = vectors[0]
        scores = [sum(a * b for a, b in zip(whole, v)) for v in vectors[1:]]
        best = sentences[max(range(len(sentences)), key=scores.__getitem__)]
        return " ".join(best.split()[: int(limit.group(1))])
    fields = re.search(r"Extract these fields from the user's text: (.+?)\. Reply", system)
    if fields:
        found = {}
        for name in (f.strip() for f in fields.group(1).split(",")):
            match = re.search(rf"\b{re.escape(name)}\s*(?::|=|\bis\b)\s*([^,;\n]+)", user,
                              re.IGNORECASE)
            found[name] = match.group(1).strip().rstrip(".") if match else None
        return json.dumps(found)
    if json_mode:
        return json.dumps({"text": user})
    return user


def _image_bytes(url: str) -> bytes:
    import base64

    match = re.fullmatch(r"data:image/[\w.+-]+;base64,(.+)", url, re.DOTALL)
    if not match:
        raise ValueError("only data: URLs of base64 images are supported (no internet here)")
    return base64.b64decode(match.group(1), validate=True)


def _seen(images: list[bytes], echo: bool) -> list[str]:
    """What the "vision" sees in each image: its size for ``echo``, else its detections."""
    import rillet as rl

    df = rl.from_pydict({"b": images})
    if echo:
        out = df.select(rl.col("b").image.width().alias("w"), rl.col("b").image.height().alias("h"))
        return [f"[image {w}x{h}]" for w, h in zip(*out.to_pydict().values())]
    # Confident detections only: the description should not hinge on a borderline box.
    found = df.select(rl.ai.detect_objects(rl.col("b"), confidence=0.4, on_error="raise")
                      .alias("d")).to_pydict()["d"]
    sentences = []
    for detections in found:
        labels = sorted({d["label"].replace("_", " ").lower() for d in detections})
        sentences.append(f"A photo showing: {', '.join(labels)}." if labels
                         else "A photo with no people in it.")
    return sentences


def _user_text(content: Any, echo: bool) -> str:
    """A user message's content as text: a string, or content parts whose images are
    replaced by what the detector sees in them."""
    if isinstance(content, str):
        return content
    texts = [part["text"] for part in content if part.get("type") == "text"]
    images = [_image_bytes(part["image_url"]["url"]) for part in content if part.get("type") == "image_url"]
    if not images:
        return "\n".join(texts)
    seen = _seen(images, echo)
    # The task's text ("Classify this image.") only frames the question; the answer is
    # about what the image shows.
    return "\n".join(texts + seen) if echo else "\n".join(seen)


def _speech_segments(wav_bytes: bytes) -> str:
    import numpy as np
    import rillet as rl

    with wave.open(io.BytesIO(wav_bytes)) as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        frames = w.readframes(w.getnframes())
    if width != 2:
        raise ValueError(f"expected 16-bit PCM, got {8 * width}-bit samples")
    samples = np.frombuffer(frames, "<i2").astype(np.float32) / 32768.0
    samples = samples.reshape(-1, channels).mean(axis=1)
    df = rl.from_pydict({"a": [(samples, rate)]})
    audio = rl.col("a") if rate == 16000 else rl.col("a").audio.resample(16000)
    [ranges] = df.select(rl.ai.detect_speech(audio).alias("s")).to_pydict()["s"]
    return " ".join(f"speech {r['start_ms'] / 1000:.2f}-{r['end_ms'] / 1000:.2f}" for r in ranges)


def _multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    parts = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            parts[name] = part.get_payload(decode=True) or b""
    return parts


def make_handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet: tests read stdout
            pass

        def _reply(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
            self._reply(status, {"error": {"message": message, "type": "server_error"}}, headers)

        def do_GET(self) -> None:
            if self.path == "/_stats":
                with state.lock:
                    self._reply(200, {"by_path": dict(state.seen), "arrivals": list(state.arrivals)})
            elif self.path == "/v1/models":
                self._reply(200, {"object": "list", "data": [
                    {"id": m, "object": "model"} for m in (*EMBEDDING_MODELS, "echo")]})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/_faults":
                with state.lock:
                    state.faults.extend(json.loads(body)["replies"])
                self._reply(200, {"queued": len(state.faults)})
                return
            fault = state.next_fault(self.path, body)
            if fault:
                time.sleep(float(fault.get("delay_s", 0)))
                headers = {}
                if "retry_after" in fault:
                    headers["Retry-After"] = str(fault["retry_after"])
                if "body" in fault:
                    self._reply(int(fault.get("status", 200)), fault["body"], headers)
                    return
                if "status" in fault:
                    self._error(int(fault["status"]), f"injected {fault['status']}", headers)
                    return
            try:
                self._route(body)
            except Exception as exc:  # noqa: BLE001 - a bad request, reported to the client
                self._error(400, f"{type(exc).__name__}: {exc}")

        def _route(self, body: bytes) -> None:
            if self.path == "/v1/embeddings":
                request = json.loads(body)
                model = request.get("model")
                if model not in EMBEDDING_MODELS:
                    self._error(404, f"model {model!r} not found; try {EMBEDDING_MODELS}")
                    return
                texts = request["input"]
                texts = [texts] if isinstance(texts, str) else list(texts)
                vectors = _embed(texts, model) if texts else []
                self._reply(200, {"object": "list", "model": model, "data": [
                    {"object": "embedding", "index": i, "embedding": v}
                    for i, v in enumerate(vectors)]})
            elif self.path == "/v1/chat/completions":
                request = json.loads(body)
                messages = request.get("messages", [])
                system = "\n".join(m["content"] for m in messages if m["role"] == "system")
                echo = request.get("model") == "echo"
                try:
                    user = "\n".join(_user_text(m["content"], echo) for m in messages if m["role"] == "user")
                except (ValueError, KeyError, TypeError) as e:
                    self._error(400, f"bad message content: {e}")
                    return
                json_mode = (request.get("response_format") or {}).get("type") == "json_object"
                content = _answer_chat(request.get("model", ""), system, user, json_mode)
                self._reply(200, {"object": "chat.completion", "model": request.get("model"),
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant",
                                                           "content": content}}]})
            elif self.path == "/v1/audio/transcriptions":
                parts = _multipart(self.headers["Content-Type"], body)
                if "file" not in parts:
                    self._error(400, "no file part")
                    return
                self._reply(200, {"text": _speech_segments(parts["file"])})
            else:
                self._error(404, f"no route {self.path}")

    return Handler


def serve(host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A started server (in a background thread); its base URL is
    ``f"http://{host}:{server.server_port}/v1"``. Stop it with ``server.shutdown()``."""
    server = ThreadingHTTPServer((host, port), make_handler(_State()))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = parser.parse_args(argv)
    server = serve(args.host, args.port)
    print(f"http://{args.host}:{server.server_port}/v1", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
