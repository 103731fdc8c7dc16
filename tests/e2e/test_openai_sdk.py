"""The official OpenAI Python SDK, unmodified, against unbroken with only base_url changed.

The gateway's address comes from UNBROKEN_URL (e.g. http://127.0.0.1:8080), started by
scripts/e2e with tests/e2e/sim.toml: `sim` answers 24 tokens quickly, `sim-slow` 200
tokens 10 ms apart, `sim-late` 12 tokens after 2.5 s, `sim-refuses` answers 400 as an
upstream refusing the request would.
"""

import asyncio
import json
import os
import unittest

import httpx
import openai

URL = os.environ.get("UNBROKEN_URL", "http://127.0.0.1:8080")
MESSAGES = [{"role": "user", "content": "Tell me something."}]


def client(**kwargs):
    return openai.OpenAI(
        base_url=f"{URL}/v1", api_key="unused", max_retries=0, timeout=30, **kwargs
    )


def text_of(chunks):
    return "".join(
        c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].delta
    )


def sse_events(response):
    """Parse an SSE body into (id, data) pairs, as a browser would (comments skipped)."""
    last_id, data = "", []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield last_id, "\n".join(data)
            data = []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "id":
                last_id = value


class Streaming(unittest.TestCase):
    def test_sync_stream_arrives_in_chunks_and_finishes_with_stop(self):
        with client() as c:
            chunks = list(c.chat.completions.create(model="sim", messages=MESSAGES, stream=True))
        content = [ch for ch in chunks if ch.choices and ch.choices[0].delta.content]
        self.assertEqual(len(content), 24, "one chunk per token")
        self.assertEqual(len(text_of(chunks).split()), 24)
        self.assertEqual(chunks[-1].choices[0].finish_reason, "stop")
        ids = {ch.id for ch in chunks}
        self.assertEqual(len(ids), 1, "one id for the whole answer")
        self.assertTrue(ids.pop().startswith("chatcmpl-"))
        self.assertTrue(all(ch.object == "chat.completion.chunk" for ch in chunks))
        self.assertTrue(all(ch.model == "sim" for ch in chunks))

    def test_the_canonical_loop_reads_choices_0_of_every_chunk(self):
        # OpenAI's own example: no usage chunk (with empty choices) unless asked for.
        with client() as c:
            stream = c.chat.completions.create(model="sim", messages=MESSAGES, stream=True)
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
        self.assertEqual(len(text.split()), 24)

    def test_include_usage_ends_with_the_usage_chunk_after_the_finish(self):
        with client() as c:
            chunks = list(
                c.chat.completions.create(
                    model="sim",
                    messages=MESSAGES,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, 24)
        self.assertEqual(chunks[-2].choices[0].finish_reason, "stop")
        self.assertEqual(len(text_of(chunks).split()), 24)

    def test_a_first_token_later_than_a_heartbeat_period_follows_heartbeats(self):
        # The gateway commits the response after one heartbeat period (1 s here) without a
        # token, so load balancers see bytes; the SDK must read the answer all the same.
        with client() as c:
            chunks = list(c.chat.completions.create(model="sim-late", messages=MESSAGES, stream=True))
        self.assertEqual(len(text_of(chunks).split()), 12)
        self.assertEqual(chunks[-1].choices[0].finish_reason, "stop")
        body = {"model": "sim-late", "messages": MESSAGES, "stream": True}
        with httpx.Client(timeout=30) as h:
            with h.stream("POST", f"{URL}/v1/chat/completions", json=body) as r:
                self.assertEqual(r.status_code, 200)
                lines = [line for line in r.iter_lines() if line]
        first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
        self.assertIn(": keep-alive", lines[:first_data])

    def test_non_streaming_returns_the_message_and_usage(self):
        with client() as c:
            answer = c.chat.completions.create(model="sim", messages=MESSAGES)
        self.assertTrue(answer.id.startswith("chatcmpl-"))
        self.assertEqual(answer.object, "chat.completion")
        self.assertEqual(answer.choices[0].message.role, "assistant")
        self.assertEqual(len(answer.choices[0].message.content.split()), 24)
        self.assertEqual(answer.choices[0].finish_reason, "stop")
        self.assertEqual(answer.usage.completion_tokens, 24)
        self.assertEqual(
            answer.usage.total_tokens,
            answer.usage.prompt_tokens + answer.usage.completion_tokens,
        )


class Wire(unittest.TestCase):
    def test_the_sdk_decoder_sees_only_events_with_data(self):
        # openai-python's own SSE decoder dispatches on any blank line once `retry:` or
        # `id:` was seen, then fails to parse the empty data as JSON: a standalone
        # `retry: N\n\n` block, or a heartbeat comment followed by a blank line, breaks it.
        # This test names that cause when the streaming tests fail with JSONDecodeError.
        from openai._streaming import SSEDecoder

        body = {"model": "sim", "stream": True, "messages": MESSAGES}
        with httpx.Client(base_url=URL, timeout=30) as http:
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                self.assertEqual(response.status_code, 200)
                raw = b"".join(response.iter_bytes())
        events = list(SSEDecoder().iter_bytes(iter([raw])))
        empty = [e for e in events if e.data == ""]
        self.assertEqual(
            empty, [], f"events with empty data; the body starts {raw[:40]!r}"
        )
        self.assertEqual(events[-1].data, "[DONE]")


class AsyncStreaming(unittest.IsolatedAsyncioTestCase):
    async def test_async_client_streams_too(self):
        async with openai.AsyncOpenAI(
            base_url=f"{URL}/v1", api_key="unused", max_retries=0, timeout=30
        ) as c:

            async def one():
                stream = await c.chat.completions.create(
                    model="sim", messages=MESSAGES, stream=True
                )
                return [chunk async for chunk in stream]

            answers = await asyncio.gather(*(one() for _ in range(4)))
        for chunks in answers:
            self.assertEqual(len(text_of(chunks).split()), 24)
            self.assertEqual(chunks[-1].choices[0].finish_reason, "stop")
        self.assertEqual(len({a[0].id for a in answers}), 4, "four distinct streams")


class Models(unittest.TestCase):
    def test_models_list_names_the_configured_models(self):
        with client() as c:
            models = c.models.list()
        self.assertEqual({m.id for m in models}, {"sim", "sim-slow", "sim-late", "sim-refuses", "claude", "claude-tools", "claude-cut", "gemini", "gemini-tools"})
        self.assertTrue(all(m.object == "model" for m in models))


class Errors(unittest.TestCase):
    def test_unknown_model_is_not_found(self):
        with client() as c, self.assertRaises(openai.NotFoundError) as caught:
            c.chat.completions.create(model="no-such-model", messages=MESSAGES, stream=True)
        self.assertEqual(caught.exception.status_code, 404)
        self.assertEqual(caught.exception.code, "model_not_found")

    def test_malformed_request_is_bad_request(self):
        with client() as c, self.assertRaises(openai.BadRequestError) as caught:
            c.chat.completions.create(model="sim", messages=[])
        self.assertEqual(caught.exception.status_code, 400)
        self.assertIn("messages", caught.exception.message)

    def test_an_upstream_refusal_reaches_the_sdk_with_its_explanation(self):
        for stream in (True, False):
            with client() as c, self.assertRaises(openai.BadRequestError) as caught:
                c.chat.completions.create(model="sim-refuses", messages=MESSAGES, stream=stream)
            self.assertEqual(caught.exception.status_code, 400)
            self.assertIn("simulated error", caught.exception.message)

    def test_a_body_not_sent_as_json_is_refused(self):
        body = json.dumps({"model": "sim", "messages": MESSAGES})
        response = httpx.post(
            f"{URL}/v1/chat/completions", content=body, headers={"content-type": "text/plain"}
        )
        self.assertEqual(response.status_code, 415)
        self.assertEqual(response.json()["error"]["code"], "unsupported_media_type")


class Resume(unittest.TestCase):
    def test_raw_response_names_the_stream_and_a_cut_answer_resumes(self):
        with client() as c:
            raw = c.chat.completions.with_raw_response.create(
                model="sim-slow", messages=MESSAGES, stream=True
            )
            stream_id = raw.headers["unbroken-stream-id"]
            self.assertTrue(stream_id)
            stream = raw.parse()
            seen = []
            for chunk in stream:
                seen.append(chunk)
                if len(seen) == 5:
                    break
            stream.close()  # the connection drops mid-answer
        self.assertEqual(seen[0].id, f"chatcmpl-{stream_id}")

        # Every chunk is one SSE event whose id is its seq; seq 1 names the upstream
        # request serving the answer (not a chunk), so 5 chunks end at id 6.
        with httpx.Client(base_url=URL, timeout=30) as http:
            with http.stream(
                "GET", f"/v1/streams/{stream_id}", headers={"Last-Event-ID": "6"}
            ) as response:
                self.assertEqual(response.status_code, 200)
                self.assertTrue(
                    response.headers["content-type"].startswith("text/event-stream")
                )
                rest = list(sse_events(response))
            self.assertEqual(rest[-1][1], "[DONE]")
            ids = [int(i) for i, _ in rest]
            # Tokens, then the finish two ids on (the usage record, not asked for, is not
            # rendered), then [DONE]: none missing, none twice.
            tokens = ids[:-2]
            self.assertEqual(tokens, list(range(7, 7 + len(tokens))), "no token id missing")
            self.assertEqual(ids[-2:], [tokens[-1] + 2, tokens[-1] + 3])
            chunks = [json.loads(d) for _, d in rest[:-1]]
            self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "stop")
            resumed_text = "".join(
                ch["choices"][0]["delta"].get("content") or ""
                for ch in chunks
                if ch["choices"]
            )
            whole = text_of(seen) + resumed_text
            self.assertEqual(len(whole.split()), 200, "the whole answer, once")

            # From the start, the log gives the same answer; after [DONE], nothing: 204.
            with http.stream("GET", f"/v1/streams/{stream_id}?last_event_id=0") as response:
                replay = list(sse_events(response))
            replay_text = "".join(
                (json.loads(d)["choices"] or [{"delta": {}}])[0]["delta"].get("content") or ""
                for _, d in replay[:-1]
            )
            self.assertEqual(replay_text, whole)
            done = http.get(f"/v1/streams/{stream_id}", headers={"Last-Event-ID": rest[-1][0]})
            self.assertEqual(done.status_code, 204)
