#!/usr/bin/env python3
"""OpenAI Python SDK compatibility check for a running Switchyard server (Unix socket).

Usage: openai_sdk_check.py --socket PATH --engine echo|model [--only NAME[,NAME...]]

Drives the server with the official `openai` package (sync client and async client, both over an httpx
transport bound to the Unix socket) and prints one line per check:

    PASS <name>: <detail>
    FAIL <name>: <detail>
    NOTE <name>: <detail>     an observed deviation from OpenAI's API that is not (yet) a failing check

It ends with "N passed, N failed" and exits 1 when any check failed (2 on a usage error).
The echo engine (`--engine echo`) answers a completion's prompt or a chat's last user message back,
one byte per token, so its answers are checked exactly; the model engine's answers are checked for shape,
limits and determinism (temperature 0, or a fixed seed).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
import traceback

try:  # openai >= 3 is built on httpx2 (same API as httpx); older releases on httpx.
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

import openai
from openai.types import Completion, CompletionUsage, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.completion_usage import PromptTokensDetails

BASE_URL = "http://localhost/v1"
WORKER_HEADER = "x-switchyard-worker"


class CheckFailed(Exception):
    pass


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


class Runner:
    def __init__(self, socket: str, engine: str, only: set[str] | None, verbose: bool = False):
        self.socket = socket
        self.verbose = verbose
        self.engine = engine
        self.only = only
        self.passed: list[str] = []
        self.failed: list[str] = []
        self.notes: list[str] = []
        self.http = httpx.Client(transport=httpx.HTTPTransport(uds=socket), timeout=30.0)
        self.client = openai.OpenAI(base_url=BASE_URL, api_key="unused", max_retries=0, timeout=30.0,
                                    http_client=self.http)
        # Plain HTTP (no SDK) for /metrics, /tokenize and the raw-SSE look.
        self.raw = httpx.Client(transport=httpx.HTTPTransport(uds=socket), base_url="http://localhost", timeout=30.0)
        self.model = "unset"

    # ---- bookkeeping ----
    def run(self, name: str, fn) -> None:
        if self.only and name not in self.only:
            return
        t0 = time.monotonic()
        try:
            detail = fn()
            dt = time.monotonic() - t0
            self.passed.append(name)
            print(f"PASS {name}: {detail} [{dt:.2f}s]", flush=True)
        except CheckFailed as e:
            self.failed.append(name)
            print(f"FAIL {name}: {e}", flush=True)
        except Exception as e:  # an unexpected SDK exception is a failure too, with its type and message
            self.failed.append(name)
            body = getattr(e, "body", None)
            extra = f" body={body!r}" if body is not None else ""
            print(f"FAIL {name}: unexpected {type(e).__module__}.{type(e).__name__}: {e}{extra}", flush=True)
            if self.verbose:
                traceback.print_exc()

    def note(self, name: str, detail: str) -> None:
        self.notes.append(name)
        print(f"NOTE {name}: {detail}", flush=True)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for line in self.raw.get("/metrics").text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
        return out

    def tokenize(self, text: str) -> list[int]:
        r = self.raw.post("/tokenize", json={"content": text})
        r.raise_for_status()
        return r.json()["tokens"]

    @property
    def echo(self) -> bool:
        return self.engine == "echo"

    # ---- helpers shared by checks ----
    def check_usage(self, u, *, max_completion: int | None = None, prompt_tokens: int | None = None) -> None:
        expect(isinstance(u, CompletionUsage), f"usage is {type(u).__name__}, not CompletionUsage")
        for f in ("prompt_tokens", "completion_tokens", "total_tokens"):
            expect(isinstance(getattr(u, f), int), f"usage.{f} = {getattr(u, f)!r} is not an int")
        expect(u.prompt_tokens > 0, f"usage.prompt_tokens = {u.prompt_tokens}")
        expect(u.total_tokens == u.prompt_tokens + u.completion_tokens,
               f"usage.total_tokens {u.total_tokens} != {u.prompt_tokens} + {u.completion_tokens}")
        expect(isinstance(u.prompt_tokens_details, PromptTokensDetails),
               f"usage.prompt_tokens_details is {type(u.prompt_tokens_details).__name__}")
        ct = u.prompt_tokens_details.cached_tokens
        expect(isinstance(ct, int) and 0 <= ct <= u.prompt_tokens, f"cached_tokens = {ct!r}")
        if max_completion is not None:
            expect(u.completion_tokens <= max_completion,
                   f"completion_tokens {u.completion_tokens} > max_tokens {max_completion}")
        if prompt_tokens is not None:
            expect(u.prompt_tokens == prompt_tokens, f"prompt_tokens {u.prompt_tokens}, expected {prompt_tokens}")

    def check_finish(self, finish, completion_tokens: int, max_tokens: int) -> None:
        expect(finish in ("stop", "length"), f"finish_reason {finish!r}")
        if finish == "length":
            expect(completion_tokens == max_tokens,
                   f"finish_reason length with {completion_tokens} tokens < max_tokens {max_tokens}")

    # ---- checks ----
    def c_models_list(self):
        page = self.client.models.list()
        data = list(page)
        expect(len(data) >= 1, "models.list() returned no model")
        expect(all(isinstance(m, Model) for m in data), "entries are not openai.types.Model")
        m = data[0]
        expect(isinstance(m.id, str) and m.id, f"model id {m.id!r}")
        expect(m.object == "model", f"object {m.object!r}")
        if self.echo:
            expect(m.id == "echo", f"echo engine lists {m.id!r}, expected 'echo'")
        self.model = m.id
        return f"{len(data)} model(s): {[x.id for x in data]} owned_by={m.owned_by!r}"

    def c_models_retrieve(self):
        # GET /v1/models/{id} is part of OpenAI's API; report (not fail) when it is missing.
        try:
            m = self.client.models.retrieve(self.model)
        except openai.NotFoundError as e:
            self.note("models_retrieve", f"client.models.retrieve({self.model!r}) -> NotFoundError 404 "
                      f"code={e.code!r} message={e.message!r}: GET /v1/models/{{id}} is not served "
                      f"(OpenAI returns the Model object)")
            return "NotFoundError raised cleanly (route missing, see NOTE)"
        expect(m.id == self.model, f"retrieve returned {m.id!r}")
        return f"retrieved {m.id!r}"

    def c_chat_nonstream(self):
        prompt = "Say hello in three words." if not self.echo else "hello there, SDK"
        mt = 5
        r = self.client.chat.completions.create(model=self.model, messages=[
            {"role": "system", "content": "You are terse."}, {"role": "user", "content": prompt}],
            max_tokens=mt, temperature=0)
        expect(isinstance(r, ChatCompletion), f"got {type(r).__name__}")
        expect(r.object == "chat.completion", f"object {r.object!r}")
        expect(r.id.startswith("chatcmpl-"), f"id {r.id!r}")
        expect(isinstance(r.created, int) and r.created > 1_600_000_000, f"created {r.created!r}")
        expect(len(r.choices) == 1, f"{len(r.choices)} choices")
        ch = r.choices[0]
        expect(ch.index == 0, f"index {ch.index}")
        expect(ch.message.role == "assistant", f"role {ch.message.role!r}")
        content = ch.message.content
        expect(isinstance(content, str) and content != "", f"content {content!r}")
        self.check_usage(r.usage, max_completion=mt,
                         prompt_tokens=len(prompt.encode()) if self.echo else None)
        self.check_finish(ch.finish_reason, r.usage.completion_tokens, mt)
        if self.echo:
            expect(content == prompt[:mt], f"echo content {content!r}, expected {prompt[:mt]!r}")
            expect(ch.finish_reason == "length", f"finish_reason {ch.finish_reason!r}")
        self._chat_greedy = (prompt, content)
        return (f"content={content!r} finish={ch.finish_reason} usage=({r.usage.prompt_tokens}+"
                f"{r.usage.completion_tokens}={r.usage.total_tokens}, cached={r.usage.prompt_tokens_details.cached_tokens})")

    def c_cached_tokens(self):
        # A conversation's next turn under the same session key (the SDK's `user`) reuses the cached prefix:
        # usage.prompt_tokens_details.cached_tokens reports it (model engine; the echo engine is only reported).
        msgs = [{"role": "system", "content": "You are a helpful assistant who answers in detail. " * 4},
                {"role": "user", "content": "What is a bridge?"}]
        key = f"sdk-check-{time.time_ns()}"
        seen = []
        for _ in range(2):
            r = self.client.chat.completions.create(model=self.model, messages=msgs, max_tokens=3, temperature=0,
                                                    user=key)
            self.check_usage(r.usage, max_completion=3)
            seen.append((r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens))
            msgs = msgs + [{"role": "assistant", "content": r.choices[0].message.content},
                           {"role": "user", "content": "Tell me more."}]
        if not self.echo:
            expect(seen[1][1] > 0, f"second turn of the same session reports no cached tokens: {seen}")
        return "(prompt_tokens, cached_tokens) per turn: " + ", ".join(f"{p}/{c}" for p, c in seen)

    def _stream_chat(self, prompt: str, mt: int, **kw):
        stream = self.client.chat.completions.create(model=self.model, messages=[
            {"role": "system", "content": "You are terse."}, {"role": "user", "content": prompt}],
            max_tokens=mt, temperature=0, stream=True, **kw)
        chunks = list(stream)
        expect(len(chunks) >= 2, f"{len(chunks)} chunks")
        expect(all(isinstance(c, ChatCompletionChunk) for c in chunks), "chunks are not ChatCompletionChunk")
        expect(all(c.object == "chat.completion.chunk" for c in chunks), "chunk object")
        expect(len({c.id for c in chunks}) == 1, f"ids differ across chunks: {sorted({c.id for c in chunks})}")
        with_choices = [c for c in chunks if c.choices]
        expect(with_choices[0].choices[0].delta.role == "assistant",
               f"first delta role {with_choices[0].choices[0].delta.role!r}")
        text = "".join(c.choices[0].delta.content or "" for c in with_choices)
        finishes = [(i, c.choices[0].finish_reason) for i, c in enumerate(with_choices) if c.choices[0].finish_reason]
        expect(len(finishes) == 1 and finishes[0][0] == len(with_choices) - 1,
               f"finish_reason must be set on exactly the last choice chunk, got {finishes}")
        return chunks, with_choices, text, finishes[0][1]

    def c_chat_stream(self):
        prompt, greedy = getattr(self, "_chat_greedy", (None, None))
        if prompt is None:
            prompt = "Say hello in three words." if not self.echo else "hello there, SDK"
        mt = 5
        chunks, with_choices, text, finish = self._stream_chat(prompt, mt)
        expect(text != "", "concatenated deltas are empty")
        expect(all(c.usage is None for c in chunks), "a chunk carries usage although include_usage was not asked")
        if self.echo:
            expect(text == prompt[:mt], f"echo text {text!r}, expected {prompt[:mt]!r}")
        if greedy is not None:
            expect(text == greedy, f"streamed text {text!r} != non-streamed {greedy!r} (temperature 0)")
        return f"{len(chunks)} chunks, text={text!r}, finish={finish} (same as non-stream)"

    def c_chat_stream_include_usage(self):
        prompt = "Count to three." if not self.echo else "usage please"
        mt = 4
        chunks, with_choices, text, finish = self._stream_chat(prompt, mt, stream_options={"include_usage": True})
        last = chunks[-1]
        expect(last.choices == [], f"last chunk has {len(last.choices)} choices; OpenAI sends choices=[] with usage")
        expect(last.usage is not None, "no usage on the last chunk")
        self.check_usage(last.usage, max_completion=mt)
        expect(all(c.usage is None for c in chunks[:-1]), "usage on a chunk before the last")
        n_content = sum(1 for c in with_choices if c.choices[0].delta.content)
        if self.echo:
            expect(last.usage.completion_tokens == len(text.encode()),
                   f"completion_tokens {last.usage.completion_tokens} != {len(text.encode())} echoed bytes")
        # Raw look at the wire: OpenAI puts "usage": null on every chunk before the usage chunk.
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 2,
                "stream": True, "stream_options": {"include_usage": True}}
        with self.raw.stream("POST", "/v1/chat/completions", json=body) as resp:
            events = [l[6:] for l in resp.iter_lines() if l.startswith("data: ")]
        expect(events[-1] == "[DONE]", f"raw stream ends with {events[-1]!r}")
        objs = [json.loads(e) for e in events[:-1]]
        missing = sum(1 for o in objs[:-1] if "usage" not in o)
        if missing:
            self.note("chat_stream_include_usage",
                      f"{missing} of {len(objs) - 1} chunks before the usage chunk omit the 'usage' key "
                      f"(OpenAI sends \"usage\": null on them; the SDK parses both as None)")
        # Without stream: the server refuses stream_options (OpenAI does the same).
        try:
            self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": "x"}],
                                                max_tokens=1, stream_options={"include_usage": True})
            raise CheckFailed("stream_options without stream was accepted")
        except openai.BadRequestError as e:
            expect(e.param == "stream_options", f"param {e.param!r}")
        return (f"supported: {len(chunks)} chunks, last has choices=[] and usage=({last.usage.prompt_tokens}+"
                f"{last.usage.completion_tokens}={last.usage.total_tokens}), {n_content} content deltas; "
                f"stream_options without stream -> 400")

    def c_chat_stream_helper(self):
        # client.chat.completions.stream(): the SDK's event-based helper that rebuilds the ChatCompletion.
        # get_final_completion() raises LengthFinishReasonError (carrying the completion) when finish_reason is
        # "length", as it does against OpenAI: the echo run ends with "stop" (max_tokens > prompt), the model
        # run is cut at max_tokens and so goes through the exception.
        prompt = "Name two fruits." if not self.echo else "helper stream"
        mt = 5 if not self.echo else 50
        with self.client.chat.completions.stream(model=self.model, messages=[{"role": "user", "content": prompt}],
                                                 max_tokens=mt, temperature=0,
                                                 stream_options={"include_usage": True}) as s:
            kinds = [ev.type for ev in s]
            try:
                final = s.get_final_completion()
                how = "get_final_completion()"
            except openai.LengthFinishReasonError as e:
                final = e.completion
                how = "LengthFinishReasonError.completion"
        expect("content.delta" in kinds and "content.done" in kinds, f"events {sorted(set(kinds))}")
        msg = final.choices[0].message
        fin = final.choices[0].finish_reason
        expect(msg.content, f"final content {msg.content!r}")
        expect(fin in ("stop", "length"), f"finish {fin!r}")
        expect(final.usage is not None, "no usage on the accumulated completion")
        self.check_usage(final.usage, max_completion=mt)
        self.check_finish(fin, final.usage.completion_tokens, mt)
        if self.echo:
            expect(msg.content == prompt and fin == "stop", f"echo content {msg.content!r} finish {fin!r}")
        return f"{len(kinds)} events, {how}: content={msg.content!r} finish={fin} usage {final.usage.completion_tokens} tokens"

    def c_max_tokens_over_context(self):
        if self.echo:
            return "skipped (echo engine has no model context)"
        # max_tokens beyond the context: OpenAI refuses with 400; streamed so an accepted request costs little.
        try:
            s = self.client.completions.create(model=self.model, prompt="Hi", max_tokens=100000, stream=True)
        except openai.BadRequestError as e:
            return f"refused: 400 {e.code}"
        first = next(iter(s))
        s.close()
        self.wait_idle()
        self.note("max_tokens_over_context", "max_tokens=100000 (context 2048 by default) -> 200, generation "
                  "silently capped by the context (finish_reason 'length' when the context fills); OpenAI answers "
                  "400 (max_tokens too large / context_length_exceeded)")
        return "accepted (see NOTE)"

    def c_completions_nonstream(self):
        prompt = "The capital of France is" if not self.echo else "abcdefghij"
        mt = 6
        r = self.client.completions.create(model=self.model, prompt=prompt, max_tokens=mt, temperature=0)
        expect(isinstance(r, Completion), f"got {type(r).__name__}")
        expect(r.object == "text_completion", f"object {r.object!r}")
        expect(r.id.startswith("cmpl-"), f"id {r.id!r}")
        expect(len(r.choices) == 1 and r.choices[0].index == 0, "choices")
        text = r.choices[0].text
        expect(isinstance(text, str) and text != "", f"text {text!r}")
        self.check_usage(r.usage, max_completion=mt, prompt_tokens=len(self.tokenize(prompt)))
        self.check_finish(r.choices[0].finish_reason, r.usage.completion_tokens, mt)
        if self.echo:
            expect(text == prompt[:mt], f"echo text {text!r}, expected {prompt[:mt]!r}")
        self._cmpl_greedy = (prompt, text)
        return f"text={text!r} finish={r.choices[0].finish_reason} usage=({r.usage.prompt_tokens}+{r.usage.completion_tokens}) prompt_tokens matches /tokenize"

    def c_completions_stream(self):
        prompt, greedy = getattr(self, "_cmpl_greedy", (None, None))
        if prompt is None:
            prompt = "The capital of France is" if not self.echo else "abcdefghij"
        mt = 6
        stream = self.client.completions.create(model=self.model, prompt=prompt, max_tokens=mt, temperature=0,
                                                stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        expect(all(isinstance(c, Completion) for c in chunks), "chunks are not Completion")
        with_choices = [c for c in chunks if c.choices]
        text = "".join(c.choices[0].text for c in with_choices)
        finishes = [(i, c.choices[0].finish_reason) for i, c in enumerate(with_choices) if c.choices[0].finish_reason]
        expect(len(finishes) == 1 and finishes[0][0] == len(with_choices) - 1, f"finish reasons {finishes}")
        expect(text != "", "empty text")
        if greedy is not None:
            expect(text == greedy, f"streamed {text!r} != non-streamed {greedy!r}")
        usage = chunks[-1].usage
        expect(usage is not None and chunks[-1].choices == [], "no final usage chunk with include_usage")
        self.check_usage(usage, max_completion=mt)
        return f"{len(chunks)} chunks, text={text!r}, finish={finishes[0][1]}, usage chunk {usage.prompt_tokens}+{usage.completion_tokens}"

    def c_sampling_params(self):
        # Every parameter accepted in one request (chat and completions), then the ones with observable effects.
        mt = 6
        r = self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": "Tell me a story."}],
                                                max_tokens=mt, temperature=0.8, top_p=0.9, seed=1234, stop=["\n\n", "###"],
                                                user="sdk-check")
        self.check_usage(r.usage, max_completion=mt)
        c = self.client.completions.create(model=self.model, prompt="Once upon a time", max_tokens=mt, temperature=0.8,
                                           top_p=0.9, seed=1234, stop="###")
        self.check_usage(c.usage, max_completion=mt)
        # max_completion_tokens (the newer name) limits the answer too.
        r2 = self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": "Tell me a long story about dragons."}],
                                                 max_completion_tokens=3)
        expect(r2.usage.completion_tokens <= 3, f"max_completion_tokens=3 gave {r2.usage.completion_tokens} tokens")
        parts = ["accepted: max_tokens temperature top_p seed stop(list,str) user max_completion_tokens"]
        if self.echo:
            # The echo engine ignores sampling but cuts its answer at the first stop string, as the model does,
            # streamed or not (the text before the stop string, finish_reason "stop").
            e = self.client.completions.create(model=self.model, prompt="abc def", max_tokens=20, stop=[" "])
            expect(e.choices[0].text == "abc" and e.choices[0].finish_reason == "stop",
                   f"echo with stop=[' ']: text {e.choices[0].text!r} finish {e.choices[0].finish_reason!r}")
            chunks = list(self.client.chat.completions.create(model=self.model, stream=True, stop="f",
                                                              messages=[{"role": "user", "content": "abc def"}]))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            fin = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            expect(text == "abc de" and fin == ["stop"], f"streamed echo with stop='f': text {text!r} finish {fin!r}")
            parts.append("echo applies stop (plain and streamed)")
            return "; ".join(parts)
        # Seeded sampling is reproducible; greedy is reproducible.
        kw = dict(model=self.model, prompt="My favourite animal is", max_tokens=8, temperature=1.0, top_p=0.95)
        a = self.client.completions.create(seed=42, **kw).choices[0].text
        b = self.client.completions.create(seed=42, **kw).choices[0].text
        expect(a == b, f"seed=42 twice gave {a!r} and {b!r}")
        others = {self.client.completions.create(seed=s, **kw).choices[0].text for s in (1, 2, 3)}
        expect(len(others | {a}) > 1, f"seeds 42,1,2,3 all gave {a!r}: seed/temperature seem ignored")
        parts.append(f"seed reproducible ({a!r}), other seeds differ")
        # stop: the stop string ends the answer and is not part of it.
        s = self.client.completions.create(model=self.model, prompt="The capital of France is", max_tokens=12,
                                           temperature=0, stop=["."])
        full = self.client.completions.create(model=self.model, prompt="The capital of France is", max_tokens=12,
                                              temperature=0)
        ft = full.choices[0].text
        if "." in ft:
            want = ft[:ft.index(".")]
            expect(s.choices[0].text == want and s.choices[0].finish_reason == "stop",
                   f"stop=['.'] gave {s.choices[0].text!r}/{s.choices[0].finish_reason}, expected {want!r}/stop")
            parts.append(f"stop honoured ({ft!r} -> {s.choices[0].text!r})")
        else:
            expect("." not in s.choices[0].text, "stop string in answer")
        # max_tokens: greedy with max_tokens=3 is the prefix of max_tokens=12 and reports length.
        m3 = self.client.completions.create(model=self.model, prompt="Once upon a time", max_tokens=3, temperature=0)
        expect(m3.usage.completion_tokens == 3 and m3.choices[0].finish_reason == "length",
               f"max_tokens=3: {m3.usage.completion_tokens} tokens finish={m3.choices[0].finish_reason}")
        return "; ".join(parts)

    def c_raw_response_header(self):
        raw = self.client.chat.completions.with_raw_response.create(
            model=self.model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        w = raw.headers.get(WORKER_HEADER)
        expect(raw.status_code == 200, f"status {raw.status_code}")
        expect(w is not None and re.fullmatch(r"\d+", w) is not None, f"X-Switchyard-Worker = {w!r}")
        parsed = raw.parse()
        expect(isinstance(parsed, ChatCompletion) and parsed.choices[0].message.content is not None, "parse()")
        with self.client.chat.completions.with_streaming_response.create(
                model=self.model, messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True) as sr:
            ws = sr.headers.get(WORKER_HEADER)
            ctype = sr.headers.get("content-type", "")
            n = sum(1 for _ in sr.parse())
        expect(ws is not None and re.fullmatch(r"\d+", ws) is not None, f"streamed X-Switchyard-Worker = {ws!r}")
        expect(ctype.startswith("text/event-stream"), f"stream content-type {ctype!r}")
        c = self.client.completions.with_raw_response.create(model=self.model, prompt="hi", max_tokens=1)
        wc = c.headers.get(WORKER_HEADER)
        expect(wc is not None, "no X-Switchyard-Worker on completions")
        if raw.headers.get("x-request-id") is None:
            self.note("request_id", "no x-request-id response header (OpenAI sends one; the SDK exposes it as "
                      "response._request_id / APIStatusError.request_id, both None here)")
        return f"X-Switchyard-Worker chat={w} stream={ws} completions={wc}; parse() ok; {n} streamed chunks"

    def _bad_request(self, label: str, call, status: int, code: str, param: str | None):
        try:
            call()
        except openai.BadRequestError as e:
            expect(e.status_code == status, f"{label}: status {e.status_code}")
            expect(isinstance(e.body, dict), f"{label}: e.body is {type(e.body).__name__}")
            expect(e.code == code, f"{label}: e.code {e.code!r}, expected {code!r}")
            expect(e.type == "invalid_request_error", f"{label}: e.type {e.type!r}")
            expect(e.param == param, f"{label}: e.param {e.param!r}, expected {param!r}")
            expect(isinstance(e.body.get("message"), str) and e.body["message"], f"{label}: no message")
            return f"{label}->400/{e.code}"
        raise CheckFailed(f"{label}: no BadRequestError raised")

    def c_errors_bad_request(self):
        ch = self.client.chat.completions
        out = [
            self._bad_request("invalid role", lambda: ch.create(
                model=self.model, messages=[{"role": "wizard", "content": "hi"}], max_tokens=2),
                400, "invalid_value", "messages[0].role"),
            self._bad_request("n=3", lambda: ch.create(
                model=self.model, messages=[{"role": "user", "content": "hi"}], max_tokens=2, n=3),
                400, "invalid_value", "n"),
            self._bad_request("temperature=3", lambda: ch.create(
                model=self.model, messages=[{"role": "user", "content": "hi"}], max_tokens=2, temperature=3),
                400, "invalid_value", "temperature"),
            self._bad_request("5 stop strings", lambda: self.client.completions.create(
                model=self.model, prompt="hi", max_tokens=2, stop=["a", "b", "c", "d", "e"]),
                400, "invalid_value", "stop"),
            self._bad_request("stream + invalid role", lambda: ch.create(
                model=self.model, messages=[{"role": "wizard", "content": "hi"}], max_tokens=2, stream=True),
                400, "invalid_value", "messages[0].role"),
        ]
        # The connection pool is still usable after errors.
        r = ch.create(model=self.model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        expect(r.choices[0].message.content is not None, "request after errors")
        return ", ".join(out) + "; next request ok"

    def c_errors_context_length(self):
        if self.echo:
            return "skipped (echo engine has no model context)"
        long = "hello " * 3000
        ch = self.client.chat.completions
        out = [
            self._bad_request("chat too long", lambda: ch.create(
                model=self.model, messages=[{"role": "user", "content": long}], max_tokens=2),
                400, "context_length_exceeded", None),
            self._bad_request("chat stream too long", lambda: ch.create(
                model=self.model, messages=[{"role": "user", "content": long}], max_tokens=2, stream=True),
                400, "context_length_exceeded", None),
            self._bad_request("completion too long", lambda: self.client.completions.create(
                model=self.model, prompt=long, max_tokens=2),
                400, "context_length_exceeded", None),
        ]
        return ", ".join(out)

    def c_errors_not_found(self):
        try:
            self.client.post("/no/such/route", body={"x": 1}, cast_to=object)
            raise CheckFailed("POST /v1/no/such/route did not raise")
        except openai.NotFoundError as e:
            expect(e.status_code == 404, f"status {e.status_code}")
            expect(isinstance(e.body, dict) and e.code == "not_found", f"code {e.code!r} body {e.body!r}")
        try:
            self.client.get("/no/such/route", cast_to=object)
            raise CheckFailed("GET /v1/no/such/route did not raise")
        except openai.NotFoundError as e:
            expect(e.status_code == 404 and e.code == "not_found", f"GET: {e.status_code} {e.code!r}")
        return "POST and GET unknown routes -> NotFoundError 404 code=not_found"

    def c_async_concurrent_streams(self):
        n = 8
        mt = 8

        async def main():
            ah = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=self.socket), timeout=30.0)
            ac = openai.AsyncOpenAI(base_url=BASE_URL, api_key="unused", max_retries=0, http_client=ah)
            prompts = [f"stream number {i} " + "xyz" * i if self.echo else f"Name a colour, attempt {i}." for i in range(n)]

            async def one(i):
                s = await ac.chat.completions.create(model=self.model, messages=[{"role": "user", "content": prompts[i]}],
                                                     max_tokens=mt, stream=True, temperature=0,
                                                     stream_options={"include_usage": True})
                ids, text, fin, usage = set(), "", None, None
                async for c in s:
                    ids.add(c.id)
                    if c.usage is not None:
                        usage = c.usage
                    if c.choices:
                        text += c.choices[0].delta.content or ""
                        fin = c.choices[0].finish_reason or fin
                return ids, text, fin, usage

            t0 = time.monotonic()
            try:
                res = await asyncio.gather(*(one(i) for i in range(n)))
            finally:
                await ac.close()
            return prompts, res, time.monotonic() - t0

        prompts, res, dt = asyncio.run(main())
        all_ids = set()
        for i, (ids, text, fin, usage) in enumerate(res):
            expect(len(ids) == 1, f"stream {i}: ids {ids}")
            all_ids |= ids
            expect(text != "", f"stream {i}: empty text")
            expect(fin in ("stop", "length"), f"stream {i}: finish {fin!r}")
            expect(usage is not None and usage.completion_tokens <= mt, f"stream {i}: usage {usage}")
            if self.echo:
                expect(text == prompts[i][:mt], f"stream {i}: got {text!r}, expected its own prompt {prompts[i][:mt]!r}")
        expect(len(all_ids) == n, f"{len(all_ids)} distinct ids for {n} streams")
        return f"{n} concurrent async streams in {dt:.2f}s, {len(all_ids)} distinct ids, each got its own answer"

    def busy(self, m: dict[str, float]) -> float:
        """Requests the front has in flight plus those the workers still hold (queued or decoding)."""
        return m.get("switchyard_requests_in_flight", 0) + sum(
            v for k, v in m.items() if k.startswith("switchyard_worker_in_flight{"))

    def wait_idle(self, limit: float = 2.0) -> float:
        t0 = time.monotonic()
        while self.busy(self.metrics()) and time.monotonic() - t0 < limit:
            time.sleep(0.02)
        return self.busy(self.metrics())

    def c_cancel_mid_stream(self):
        # Long enough that, uncancelled, the worker would still be decoding well past the deadline below.
        mt = 1000
        deadline = 1.5
        prompt = "Write a long essay about the history of bridges." if not self.echo else "0123456789" * 100
        self.wait_idle()
        before = self.metrics()
        expect(self.busy(before) == 0, f"server not idle before the check: {self.busy(before)} in flight")
        stream = self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": prompt}],
                                                     max_tokens=mt, stream=True)
        got = 0
        for c in stream:
            if c.choices and c.choices[0].delta.content:
                got += 1
            if got >= 3:
                break
        busy_open = self.busy(self.metrics())
        stream.close()  # client-side cancel: closes the HTTP response (and its connection) mid-body
        t_close = time.monotonic()
        # The server should notice the closed connection and stop generating (front and worker).
        drained = False
        while time.monotonic() - t_close < deadline:
            if self.busy(self.metrics()) == 0:
                drained = True
                break
            time.sleep(0.02)
        drain_s = time.monotonic() - t_close
        after = self.metrics()
        expect(got >= 3, f"stream ended after {got} deltas, before the cancel")
        expect(drained, f"{self.busy(after):.0f} request(s) still in flight (front + workers) {deadline} s after "
                        f"the client closed the stream (max_tokens {mt}): generation not cancelled")
        status = {k.split("status=")[1].rstrip("}").strip('"'): int(v - before.get(k, 0)) for k, v in after.items()
                  if k.startswith('switchyard_requests_total{route="chat_completions"') and v - before.get(k, 0)}
        # A new request on the same client works.
        r = self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": "hi again"}],
                                                max_tokens=3)
        expect(r.choices[0].message.content, "request after cancel: empty content")
        return (f"closed after {got} deltas (in flight while open: {busy_open:.0f}); server idle "
                f"{drain_s:.2f}s after the close; chat status counts {status}; next request ok")

    def c_logprobs(self):
        # Chat: logprobs=True + top_logprobs; the SDK's typed objects; each entry's bytes together are the answer.
        prompt = "Name a colour." if not self.echo else "logprobs ñ"
        mt = 6
        r = self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": prompt}],
                                                max_tokens=mt, temperature=0, logprobs=True, top_logprobs=3)
        lp = r.choices[0].logprobs
        expect(lp is not None and lp.content, f"choices[0].logprobs {lp!r}")
        expect(len(lp.content) == r.usage.completion_tokens,
               f"{len(lp.content)} entries for {r.usage.completion_tokens} completion tokens")
        for e in lp.content:
            expect(isinstance(e.token, str) and isinstance(e.logprob, float) and e.logprob <= 0, f"entry {e!r}")
            expect(len(e.top_logprobs) == 3, f"{len(e.top_logprobs)} top_logprobs, asked 3")
            expect(e.top_logprobs[0].logprob >= e.logprob - 1e-6, "the sampled token is above the most likely")
        joined = bytes(b for e in lp.content for b in e.bytes).decode("utf-8", "replace")
        if r.choices[0].finish_reason == "length":
            expect(joined == r.choices[0].message.content, f"entry bytes {joined!r} != content {r.choices[0].message.content!r}")
        # Streamed: the chunks' entries add up to the same (temperature 0).
        stream = self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": prompt}],
                                                     max_tokens=mt, temperature=0, logprobs=True, stream=True)
        entries = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
        expect([e.token for e in entries] == [e.token for e in lp.content],
               f"streamed entries {[e.token for e in entries]} != {[e.token for e in lp.content]}")
        # Completions (legacy shape).
        c = self.client.completions.create(model=self.model, prompt=prompt, max_tokens=mt, temperature=0, logprobs=2)
        cl = c.choices[0].logprobs
        n = len(cl.tokens or [])
        expect(n == c.usage.completion_tokens and len(cl.token_logprobs) == n and len(cl.top_logprobs) == n
               and len(cl.text_offset) == n, f"completions logprobs lengths {cl!r}")
        expect(cl.text_offset == sorted(cl.text_offset) and cl.text_offset[0] == 0, f"text_offset {cl.text_offset}")
        return (f"chat {len(lp.content)} entries (first {lp.content[0].token!r} {lp.content[0].logprob:.3f}), "
                f"stream same; completions {n} tokens")

    def c_penalties_logit_bias(self):
        # presence/frequency penalties and logit_bias through the SDK: accepted, and (model) a ban holds.
        prompt = "The capital of France is" if not self.echo else "penalties"
        base = dict(model=self.model, prompt=prompt, max_tokens=6, temperature=0)
        ref = self.client.completions.create(**base).choices[0].text
        r = self.client.completions.create(presence_penalty=0.5, frequency_penalty=0.5, **base).choices[0].text
        if self.echo:
            expect(r == ref, f"echo answer changed by penalties: {r!r} vs {ref!r}")
            return "accepted (the echo engine ignores logits)"
        first = self.tokenize(ref)[0]
        banned = self.client.completions.create(logit_bias={str(first): -100}, **base).choices[0].text
        expect(self.tokenize(banned)[:1] != [first], f"logit_bias -100 on {first}: answer still starts with it: {banned!r}")
        return f"greedy {ref!r}; with {first} banned {banned!r}; penalties 0.5/0.5 {r!r}"

    def c_json_mode(self):
        # response_format json_object: the model's answer is one JSON object (it parses when it ends by itself).
        r = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": "Give me a JSON object describing a cat with name and age."}],
            max_tokens=200, temperature=0, response_format={"type": "json_object"})
        content = r.choices[0].message.content
        if self.echo:
            return "json_object accepted (the echo engine does not constrain its echo)"
        expect(content.lstrip().startswith("{"), f"JSON mode answer {content!r}")
        if r.choices[0].finish_reason == "stop":
            expect(isinstance(json.loads(content), dict), f"not a JSON object: {content!r}")
        return f"{content[:60]!r}... ({r.choices[0].finish_reason})"

    def c_json_schema(self):
        # Structured outputs the SDK's way: chat.completions.parse with pydantic models (a nested model: $defs
        # and $ref; Literal: enum; Optional: anyOf with null; Field(max_length): maxItems / maxLength; strict:
        # additionalProperties false). The answer parses into the model. (The list is bounded because a model
        # this small, held to the schema, would otherwise repeat list items until max_tokens.) A schema
        # keyword the server cannot enforce is a 400 naming it.
        import pydantic
        from typing import Literal, Optional

        class Toy(pydantic.BaseModel):
            name: str = pydantic.Field(max_length=40)
            squeaky: bool

        class Cat(pydantic.BaseModel):
            name: str
            age: int
            color: Literal["black", "white", "orange", "grey"]
            toys: list[Toy] = pydantic.Field(max_length=3)
            owner: Optional[str]

        try:
            self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": "x"}], max_tokens=2,
                response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": {
                    "type": "object", "properties": {"d": {"type": "string", "format": "date-time"}}}}})
            raise CheckFailed("a schema with 'format' was accepted")
        except openai.BadRequestError as e:
            expect(e.param == "response_format" and "format" in e.message, f"400 without naming 'format': {e.message!r}")
        messages = [{"role": "user", "content": "Describe a cat: its name, age, color, toys and owner."}]
        if self.echo:
            r = self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=4,
                response_format={"type": "json_schema", "json_schema": {"name": "cat", "schema": Cat.model_json_schema()}})
            return "json_schema accepted (the echo engine does not constrain its echo); 'format' -> 400"
        r = self.client.chat.completions.parse(model=self.model, messages=messages, max_tokens=400, temperature=0,
                                               response_format=Cat)
        expect(r.choices[0].finish_reason == "stop", f"finish_reason {r.choices[0].finish_reason!r}: {r.choices[0].message.content!r}")
        cat = r.choices[0].message.parsed
        expect(isinstance(cat, Cat), f"parsed {cat!r} from {r.choices[0].message.content!r}")
        return f"parsed {cat!r}"

    def c_ignored_fields(self):
        # Content parts, and tools with the default tool_choice ("auto": this model answers in text).
        r = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            max_tokens=2,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}])
        expect(r.choices[0].message.content is not None, "content")
        if not r.choices[0].message.tool_calls:
            self.note("ignored_fields", "tools with tool_choice auto -> a text answer, finish_reason %r (the model has no "
                      "tool-call format to choose with; required or a named function force a call)" % r.choices[0].finish_reason)
        return "content parts; tools with tool_choice auto accepted"

    def c_tool_calls(self):
        # tool_choice "required" and a named function: the answer is a call, returned as message.tool_calls with
        # arguments that parse as JSON and follow the parameters; streamed, delta.tool_calls. A tool_choice
        # naming an unknown function is a 400.
        tools = [
            {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                              "parameters": {"type": "object", "additionalProperties": False,
                                                             "properties": {"city": {"type": "string", "maxLength": 40}},
                                                             "required": ["city"]}}},
            {"type": "function", "function": {"name": "get_time", "description": "Current time in a time zone",
                                              "parameters": {"type": "object", "additionalProperties": False,
                                                             "properties": {"tz": {"enum": ["UTC", "CET"]}}, "required": ["tz"]}}},
        ]
        messages = [{"role": "user", "content": "What is the weather in Paris?"}]
        try:
            self.client.chat.completions.create(model=self.model, messages=messages, tools=tools, max_tokens=4,
                                                tool_choice={"type": "function", "function": {"name": "nope"}})
            raise CheckFailed("an unknown function in tool_choice was accepted")
        except openai.BadRequestError as e:
            expect(e.param == "tool_choice", f"param {e.param!r}")
        r = self.client.chat.completions.create(model=self.model, messages=messages, tools=tools, tool_choice="required",
                                                max_tokens=100, temperature=0)
        if self.echo:
            return "tool_choice required accepted (the echo engine does not constrain its echo); unknown function -> 400"
        m = r.choices[0].message
        expect(r.choices[0].finish_reason == "tool_calls" and m.tool_calls and m.content is None,
               f"finish {r.choices[0].finish_reason!r}, message {m!r}")
        call = m.tool_calls[0]
        args = json.loads(call.function.arguments)
        expect(call.function.name in ("get_weather", "get_time") and isinstance(args, dict), f"call {call!r}")
        names, chunks, finish = [], 0, None
        with self.client.chat.completions.stream(model=self.model, messages=messages, tools=tools, max_tokens=60,
                                                 tool_choice={"type": "function", "function": {"name": "get_time"}}) as s:
            for ev in s:
                chunks += 1
            final = s.get_final_completion()
        fc = final.choices[0]
        expect(fc.finish_reason == "tool_calls" and fc.message.tool_calls and fc.message.content is None, f"streamed: {fc!r}")
        tz = json.loads(fc.message.tool_calls[0].function.arguments).get("tz")
        expect(fc.message.tool_calls[0].function.name == "get_time" and tz in ("UTC", "CET"), f"streamed call {fc.message.tool_calls[0]!r}")
        return f"{call.function.name}({call.function.arguments}); streamed get_time({fc.message.tool_calls[0].function.arguments})"

    def c_unknown_model_name(self):
        r = self.client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=2)
        self.note("unknown_model_name", f"model='no-such-model' -> 200, response model={r.model!r} "
                  f"(served: {self.model!r}); OpenAI answers 404 model_not_found")
        return f"200, response.model={r.model!r}"

    def c_prompt_token_array(self):
        # A prompt of token ids (and a list of one such list) answers as its text does (temperature 0), with
        # prompt_tokens = the ids given; an id outside the vocabulary is a clean 400.
        text = "The capital of France is" if not self.echo else "Hello"
        toks = self.tokenize(text)
        ref = self.client.completions.create(model=self.model, prompt=text, max_tokens=4, temperature=0)
        r = self.client.completions.create(model=self.model, prompt=toks, max_tokens=4, temperature=0)
        r2 = self.client.completions.create(model=self.model, prompt=[toks], max_tokens=4, temperature=0)
        expect(r.choices[0].text == ref.choices[0].text == r2.choices[0].text,
               f"token prompt {r.choices[0].text!r} / {r2.choices[0].text!r} != text prompt {ref.choices[0].text!r}")
        expect(r.usage.prompt_tokens == len(toks), f"prompt_tokens {r.usage.prompt_tokens} for {len(toks)} ids")
        try:
            self.client.completions.create(model=self.model, prompt=[10 ** 9], max_tokens=2)
            raise CheckFailed("an id outside the vocabulary was accepted")
        except openai.BadRequestError as e:
            expect("vocabulary" in e.message, f"400 without naming the vocabulary: {e.message!r}")
        return f"{toks} -> {r.choices[0].text!r} (same as the text prompt); [[ids]] too; out-of-vocabulary id -> 400"

    def c_edge_values(self):
        # Values OpenAI accepts that a strict server might not: top_p=0 (OpenAI: 0 <= top_p <= 1) and an empty
        # completions prompt. Deviations are reported as NOTEs.
        out = []
        try:
            self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=2, top_p=0)
            out.append("top_p=0 accepted")
        except openai.BadRequestError as e:
            self.note("top_p_zero", f"top_p=0 -> 400 {e.code} param={e.param!r}: {e.body.get('message')!r} "
                      f"(OpenAI accepts 0 <= top_p <= 1)")
            out.append("top_p=0 refused (NOTE)")
        try:
            r = self.client.completions.create(model=self.model, prompt="", max_tokens=2)
            out.append(f"empty prompt accepted ({r.usage.prompt_tokens} prompt tokens)")
        except openai.BadRequestError as e:
            self.note("empty_prompt", f"completions prompt='' -> 400 {e.code}: {e.body.get('message')!r} "
                      f"(OpenAI completes from the start-of-text token)")
            out.append("empty prompt refused (NOTE)")
        return "; ".join(out)

    def all(self) -> int:
        checks = [
            ("models_list", self.c_models_list),
            ("models_retrieve", self.c_models_retrieve),
            ("chat_nonstream", self.c_chat_nonstream),
            ("cached_tokens", self.c_cached_tokens),
            ("chat_stream", self.c_chat_stream),
            ("chat_stream_include_usage", self.c_chat_stream_include_usage),
            ("chat_stream_helper", self.c_chat_stream_helper),
            ("completions_nonstream", self.c_completions_nonstream),
            ("completions_stream", self.c_completions_stream),
            ("sampling_params", self.c_sampling_params),
            ("raw_response_header", self.c_raw_response_header),
            ("errors_bad_request", self.c_errors_bad_request),
            ("errors_context_length", self.c_errors_context_length),
            ("errors_not_found", self.c_errors_not_found),
            ("max_tokens_over_context", self.c_max_tokens_over_context),
            ("async_concurrent_streams", self.c_async_concurrent_streams),
            ("cancel_mid_stream", self.c_cancel_mid_stream),
            ("logprobs", self.c_logprobs),
            ("penalties_logit_bias", self.c_penalties_logit_bias),
            ("json_mode", self.c_json_mode),
            ("json_schema", self.c_json_schema),
            ("ignored_fields", self.c_ignored_fields),
            ("tool_calls", self.c_tool_calls),
            ("unknown_model_name", self.c_unknown_model_name),
            ("prompt_token_array", self.c_prompt_token_array),
            ("edge_values", self.c_edge_values),
        ]
        known = {n for n, _ in checks}
        if self.only and not self.only <= known:
            print(f"unknown check(s): {sorted(self.only - known)}; known: {sorted(known)}", file=sys.stderr)
            return 2
        if self.only and "models_list" not in self.only:
            self.model = next(iter(self.client.models.list())).id
        for name, fn in checks:
            self.run(name, fn)
        print(f"openai-sdk-check ({self.engine} engine, openai {openai.__version__}): "
              f"{len(self.notes)} note(s)", flush=True)
        print(f"{len(self.passed)} passed, {len(self.failed)} failed", flush=True)
        return 1 if self.failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True)
    ap.add_argument("--engine", choices=["echo", "model"], required=True)
    ap.add_argument("--only", help="comma-separated check names")
    ap.add_argument("-v", action="store_true", help="print tracebacks of unexpected exceptions")
    a = ap.parse_args()
    only = set(a.only.split(",")) if a.only else None
    return Runner(a.socket, a.engine, only, a.v).all()


if __name__ == "__main__":
    sys.exit(main())
