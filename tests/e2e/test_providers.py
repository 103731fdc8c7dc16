"""Claude and Gemini through unbroken with the official OpenAI Python SDK.

scripts/e2e starts fake upstreams (fake_upstreams.py) that answer with the providers'
documented event sequences; the SDK must get the same text, finish reason, tool calls
and usage as the fakes sent, and a Claude answer cut mid-stream continues on a
DeepSeek-style target with both requests paid for.
"""

import json
import os
import time
import unittest

import httpx
import openai

URL = os.environ.get("UNBROKEN_URL", "http://127.0.0.1:8080")
MESSAGES = [{"role": "user", "content": "Hello"}]


def client():
    return openai.OpenAI(base_url=f"{URL}/v1", api_key="unused", max_retries=0, timeout=30)


def stream(model):
    chunks = list(
        client().chat.completions.create(
            model=model,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return chunks, text, finish


class Claude(unittest.TestCase):
    def test_text_finish_and_usage_are_the_upstreams(self):
        chunks, text, finish = stream("claude")
        self.assertEqual(text, "Hello!")
        self.assertEqual(finish, ["stop"])
        usage = chunks[-1].usage
        self.assertEqual((usage.prompt_tokens, usage.completion_tokens), (25, 15))
        self.assertTrue(all(c.model == "text" for c in chunks))

    def test_a_tool_call_arrives_as_an_openai_tool_call(self):
        completion = client().chat.completions.create(model="claude-tools", messages=MESSAGES)
        choice = completion.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        call = choice.message.tool_calls[0]
        self.assertEqual(call.type, "function")
        self.assertEqual(call.function.name, "get_weather")
        self.assertEqual(json.loads(call.function.arguments), {"location": "San Francisco, CA"})
        self.assertTrue(call.id.startswith("toolu_"))

    def test_a_cut_answer_continues_elsewhere_and_both_requests_are_paid(self):
        raw = client().chat.completions.with_raw_response.create(
            model="claude-cut",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        self.assertEqual(raw.headers["unbroken-target"], "claude")
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, "Hello world.")
        self.assertEqual(chunks[-1].usage.completion_tokens, 1 + 3)
        stream_id = raw.headers["unbroken-stream-id"]
        status = httpx.get(f"{URL}/v1/streams/{stream_id}/status", timeout=10).json()
        targets = [(r["target"], r["status"]) for r in status["upstream_requests"]]
        self.assertEqual(targets, [("claude", "cut"), ("deepseek", "ok")])
        claude = (25 * 3.0 + 1 * 15.0) / 1e6
        deepseek = (30 * 0.5 + 3 * 2.0) / 1e6
        self.assertAlmostEqual(status["usage"]["cost_usd"], claude + deepseek, places=12)
        # The usage API has the answer once the ledger wrote it (after the answer ended).
        for _ in range(100):
            rows = httpx.get(f"{URL}/v1/usage", params={"group_by": "target"}, timeout=10).json()["data"]
            keys = {row["key"] for row in rows}
            if {"claude", "deepseek"} <= keys:
                break
            time.sleep(0.05)
        self.assertTrue({"claude", "deepseek"} <= keys, rows)


class Gemini(unittest.TestCase):
    def test_text_finish_and_usage_are_the_upstreams(self):
        chunks, text, finish = stream("gemini")
        self.assertEqual(text, "AI learns patterns from data to make predictions or decisions.")
        self.assertEqual(finish, ["stop"])
        usage = chunks[-1].usage
        # Thinking tokens are paid output.
        self.assertEqual((usage.prompt_tokens, usage.completion_tokens), (8, 11 + 643))

    def test_function_calls_arrive_as_openai_tool_calls(self):
        completion = client().chat.completions.create(model="gemini-tools", messages=MESSAGES)
        choice = completion.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
        self.assertEqual(
            calls,
            [
                ("power_disco_ball", {"power": True}),
                ("start_music", {"energetic": True, "loud": True}),
                ("dim_lights", {"brightness": 0.5}),
            ],
        )
        self.assertEqual(completion.usage.prompt_tokens, 154)


if __name__ == "__main__":
    unittest.main()
