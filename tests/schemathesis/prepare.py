"""Create the things scripts/schemathesis fuzzes with real ids, and print them.

Reads UNBROKEN_URL and UNBROKEN_KEY; prints one `NAME=value` line per id:

- ST_STREAM: a finished chat answer (streams endpoints)
- ST_SESSION: a session with one answered message (its history, new messages)
- ST_SESSION_ENDED: a session with one answered message, then ended (its channel replays
  and ends; a DELETE of it is a repeat)
- ST_TOPIC: a topic with two events
- ST_TASK_PROGRESS, ST_TASK_COMPLETE, ST_TASK_FAIL: open tasks for those reports
- ST_TASK_EVENTS: a task with a progress report, completed (its events replay and end)
- ST_RESPONSE: a finished response (its object; its events replay and end)
- ST_RESPONSE_CANCEL: a background response on the slow model, still going when the fuzzer
  cancels it
- ST_RESPONSE_DELETE: a finished response, to delete (once; then 404)

Every wait is for the gateway's own answer: an answer is awaited by reading its stream
to the end, a session's by reading its channel up to the `complete` event, a response's
by asking for it without `background` (answered once it ended).
"""

import json
import os
import sys
import urllib.error
import urllib.request

URL = os.environ["UNBROKEN_URL"].rstrip("/")
KEY = os.environ["UNBROKEN_KEY"]


def call(method, path, body=None, expect=(200, 201, 202)):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(URL + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {KEY}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    response = urllib.request.urlopen(request, timeout=30)
    if response.status not in expect:
        sys.exit(f"prepare: {method} {path} answered {response.status}")
    return response


def json_of(method, path, body=None):
    with call(method, path, body) as response:
        return json.load(response), response.headers


def read_until(path, event_name=None):
    """Read an SSE response until it ends, or until an event called `event_name`."""
    with call("GET", path) as response:
        current = None
        for raw in response:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                current = line.partition(":")[2].strip()
            elif line == "":
                if event_name is not None and current == event_name:
                    return
                current = None
    if event_name is not None:
        sys.exit(f"prepare: {path} ended before a `{event_name}` event")


def answered_session(name):
    json_of("POST", "/v1/sessions", {"sessionId": name})
    sent, _ = json_of("POST", f"/v1/sessions/{name}/messages", {"content": "Hello", "model": "sim"})
    read_until(f"/v1/sessions/{name}/events", "complete")
    return sent["sessionId"]


def end_session(name):
    """DELETE the session. The relay releases it just after writing `complete`, so the
    first attempts may still find it answering (409 `answer_in_progress`)."""
    for _ in range(1000):
        try:
            return json_of("DELETE", f"/v1/sessions/{name}")
        except urllib.error.HTTPError as error:
            if error.code != 409:
                raise
    sys.exit(f"prepare: the session {name} stayed answering")


def finished_response(text):
    """A response asked for without `background`: the answer comes once it ended."""
    response, _ = json_of("POST", "/v1/responses", {"model": "sim", "input": text})
    if response["status"] != "completed":
        sys.exit(f"prepare: the response {response['id']} ended {response['status']}")
    return response["id"]


def main():
    ids = {}
    _, headers = json_of(
        "POST",
        "/v1/chat/completions",
        {"model": "sim", "stream": False, "messages": [{"role": "user", "content": "Hello"}]},
    )
    ids["ST_STREAM"] = headers["Unbroken-Stream-Id"]

    ids["ST_SESSION"] = answered_session("schemathesis")
    ids["ST_SESSION_ENDED"] = answered_session("schemathesis-ended")
    end_session(ids["ST_SESSION_ENDED"])

    ids["ST_TOPIC"] = "schemathesis"
    json_of("POST", f"/v1/topics/{ids['ST_TOPIC']}")
    json_of(
        "POST",
        f"/v1/topics/{ids['ST_TOPIC']}/events",
        [{"event": "note", "data": {"n": 1}}, {"event": "note", "data": "two", "id": "e2"}],
    )

    for name in ["ST_TASK_PROGRESS", "ST_TASK_COMPLETE", "ST_TASK_FAIL", "ST_TASK_EVENTS"]:
        created, _ = json_of("POST", "/v1/tasks", {"title": name, "total": 2})
        ids[name] = created["taskId"]
    task = ids["ST_TASK_EVENTS"]
    json_of("POST", f"/v1/tasks/{task}/progress", {"step": 1, "total": 2, "message": "half"})
    json_of("POST", f"/v1/tasks/{task}/complete", {"result": {"ok": True}})

    ids["ST_RESPONSE"] = finished_response("Hello")
    running, _ = json_of(
        "POST", "/v1/responses", {"model": "slow", "input": "Hello", "background": True}
    )
    ids["ST_RESPONSE_CANCEL"] = running["id"]
    ids["ST_RESPONSE_DELETE"] = finished_response("Goodbye")

    for name, value in ids.items():
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
