"""The official OpenAI Python SDK's Responses API against unbroken, only base_url changed.

`sim` answers 24 tokens quickly, `sim-slow` 200 tokens 10 ms apart (tests/e2e/sim.toml);
`claude-tools` is the fake Claude upstream answering with a tool call.
"""

import os
import unittest

import openai

URL = os.environ.get("UNBROKEN_URL", "http://127.0.0.1:8080")
TERMINAL = ("response.completed", "response.incomplete", "response.failed")
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def client():
    return openai.OpenAI(base_url=f"{URL}/v1", api_key="unused", max_retries=0, timeout=30)


class Responses(unittest.TestCase):
    def test_a_stream_parses_into_typed_events_and_collects_the_text(self):
        with client() as c:
            events = list(c.responses.create(model="sim", input="Tell me something.", stream=True))
        types = [e.type for e in events]
        self.assertEqual(types[:2], ["response.created", "response.in_progress"])
        self.assertEqual(types[-1], "response.completed")
        self.assertEqual([e.sequence_number for e in events], list(range(len(events))))
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        self.assertEqual(len(text.split()), 24)
        final = events[-1].response
        self.assertEqual(final.status, "completed")
        self.assertEqual(final.output_text, text)
        self.assertEqual(final.usage.output_tokens, 24)
        self.assertTrue(final.id.startswith("resp_"))

    def test_a_response_without_stream_is_the_whole_object(self):
        with client() as c:
            response = c.responses.create(
                model="sim", input="Tell me something.", instructions="Be brief.", metadata={"k": "v"}
            )
            self.assertEqual(response.status, "completed")
            self.assertEqual(len(response.output_text.split()), 24)
            self.assertEqual(response.instructions, "Be brief.")
            self.assertEqual(response.metadata, {"k": "v"})
            again = c.responses.retrieve(response.id)
            self.assertEqual(again.output_text, response.output_text)

    def test_a_background_stream_broken_off_resumes_with_starting_after(self):
        with client() as c:
            stream = c.responses.create(
                model="sim-slow", input="Count.", stream=True, background=True
            )
            rid, last, text, deltas = None, -1, "", 0
            for event in stream:
                self.assertEqual(event.sequence_number, last + 1)
                last = event.sequence_number
                if event.type == "response.created":
                    rid = event.response.id
                    self.assertTrue(event.response.background)
                elif event.type == "response.output_text.delta":
                    text += event.delta
                    deltas += 1
                    if deltas == 5:
                        break
            stream.close()

            terminal = None
            for event in c.responses.retrieve(rid, stream=True, starting_after=last):
                self.assertEqual(event.sequence_number, last + 1, "none lost, none repeated")
                last = event.sequence_number
                if event.type == "response.output_text.delta":
                    text += event.delta
                elif event.type in TERMINAL:
                    terminal = event
            self.assertEqual(terminal.type, "response.completed")
            self.assertEqual(terminal.response.output_text, text)
            self.assertEqual(len(text.split()), 200)
            self.assertEqual(c.responses.retrieve(rid).output_text, text)
            # The SDK's own helper replays from the start and filters.
            with c.responses.stream(response_id=rid, starting_after=3) as helper:
                self.assertTrue(all(e.sequence_number > 3 for e in helper))
                self.assertEqual(helper.get_final_response().output_text, text)

    def test_a_background_response_answers_at_once_and_finishes_unread(self):
        with client() as c:
            queued = c.responses.create(model="sim-slow", input="Count.", background=True)
            self.assertIn(queued.status, ("queued", "in_progress"))
            events = list(c.responses.retrieve(queued.id, stream=True))
            self.assertEqual(events[-1].type, "response.completed")
            self.assertEqual(c.responses.retrieve(queued.id).status, "completed")

    def test_a_number_beyond_the_end_is_refused_and_the_end_itself_is_nothing_left(self):
        with client() as c:
            done = c.responses.create(model="sim", input="Hi")
            events = list(c.responses.retrieve(done.id, stream=True))
            last = events[-1].sequence_number
            self.assertEqual(list(c.responses.retrieve(done.id, stream=True, starting_after=last)), [])
            with self.assertRaises(openai.BadRequestError):
                list(c.responses.retrieve(done.id, stream=True, starting_after=last + 1))

    def test_cancel_stops_the_answer_and_is_idempotent(self):
        with client() as c:
            queued = c.responses.create(model="sim-slow", input="Count.", background=True)
            cancelled = c.responses.cancel(queued.id)
            self.assertEqual(cancelled.status, "cancelled")
            self.assertLess(len(cancelled.output_text.split()), 200)
            self.assertEqual(c.responses.cancel(queued.id).status, "cancelled")
            self.assertEqual(c.responses.retrieve(queued.id).status, "cancelled")

    def test_delete_hides_the_response(self):
        with client() as c:
            done = c.responses.create(model="sim", input="Hi")
            c.responses.delete(done.id)
            with self.assertRaises(openai.NotFoundError):
                c.responses.retrieve(done.id)

    def test_previous_response_id_continues_the_conversation(self):
        with client() as c:
            first = c.responses.create(model="sim", input="Tell me something.")
            second = c.responses.create(
                model="sim", input="And more?", previous_response_id=first.id
            )
            self.assertEqual(second.previous_response_id, first.id)
            self.assertEqual(second.status, "completed")
            with self.assertRaises(openai.NotFoundError):
                c.responses.create(model="sim", input="?", previous_response_id="resp_nothing")

    def test_a_function_calling_round_trip(self):
        with client() as c:
            asked = c.responses.create(
                model="claude-tools", input="What is the weather in Paris?", tools=[WEATHER]
            )
            calls = [item for item in asked.output if item.type == "function_call"]
            self.assertEqual(len(calls), 1, asked.output)
            call = calls[0]
            self.assertTrue(call.call_id)
            self.assertEqual(call.name, "get_weather")
            answered = c.responses.create(
                model="sim",
                previous_response_id=asked.id,
                input=[{"type": "function_call_output", "call_id": call.call_id, "output": "21C"}],
                tools=[WEATHER],
            )
            self.assertEqual(answered.status, "completed")
            self.assertTrue(answered.output_text)

    def test_bad_input_names_the_field(self):
        with client() as c:
            with self.assertRaises(openai.BadRequestError) as refused:
                c.responses.create(model="sim", input=[{"type": "nonsense"}])
            self.assertIn("input[0]", str(refused.exception))
            with self.assertRaises(openai.NotFoundError):
                c.responses.create(model="no-such-model", input="Hi")


if __name__ == "__main__":
    unittest.main()
