"""Fake Anthropic, Gemini and DeepSeek-style upstreams for the end-to-end tests.

They answer with the providers' documented event sequences: the fixtures of
crates/providers/tests/fixtures (each names its source), picked by the request's model.

    POST /v1/messages                           Anthropic: anthropic/<model>.sse
    POST /v1beta/models/<model>:streamGenerateContent?alt=sse
                                                Gemini: gemini/<model>.sse
    POST /v1/chat/completions                   model "deepseek": continues a trailing
                                                assistant message marked "prefix": true
                                                with " world." and its usage

Run as `python fake_upstreams.py`: it listens on 127.0.0.1 at a free port and prints
`fake upstreams on http://127.0.0.1:PORT`.
"""

import json
import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(ROOT, "..", "..", "crates", "providers", "tests", "fixtures")
NAME = re.compile(r"^[a-z_]+$")


def fixture(provider, name):
    if not NAME.match(name):
        return None
    path = os.path.join(FIXTURES, provider, f"{name}.sse")
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as file:
        return file.read()


def chunk(delta, finish=None, usage=None):
    body = {"id": "c", "object": "chat.completion.chunk", "model": "deepseek"}
    body["choices"] = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
    if usage:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type="text/event-stream"):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        request = json.loads(self.rfile.read(length) or b"{}")
        path = self.path.split("?")[0]
        body = None
        if path == "/v1/messages":
            body = fixture("anthropic", request.get("model", ""))
        elif path.startswith("/v1beta/models/"):
            model = path[len("/v1beta/models/"):].split(":")[0]
            body = fixture("gemini", model)
        elif path == "/v1/chat/completions" and request.get("model") == "deepseek":
            last = request["messages"][-1]
            if last.get("role") != "assistant" or last.get("prefix") is not True:
                return self.reply(400, b'{"error":{"message":"no prefix"}}', "application/json")
            body = (
                chunk({"role": "assistant", "content": " world"})
                + chunk({"content": "."})
                + chunk({}, "stop")
                + chunk(None, usage={"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33})
                + "data: [DONE]\n\n"
            ).encode()
        if body is None:
            return self.reply(404, b'{"error":{"message":"no such fixture"}}', "application/json")
        self.reply(200, body)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"fake upstreams on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
