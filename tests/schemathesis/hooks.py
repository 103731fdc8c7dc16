"""Schemathesis hooks for scripts/schemathesis (loaded through `hooks` in schemathesis.toml).

- a guard against a flaky error of this machine's Python;
- `deleteResponse` deletes the prepared response (ST_RESPONSE_DELETE) outside the stateful
  phase, and the response the link names in it.
"""

import os
import uuid

import schemathesis
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.meta import TestPhase

# CPython 3.11.7 (this machine's) can raise `SystemError: AST constructor recursion depth
# mismatch` from `ast.parse` deep in a call stack; Hypothesis parses source to name a
# lambda in a strategy's description, and the error surfaces as a flaky "Runtime Error" of
# the run. A lambda it cannot name is described as Hypothesis does when it has no source.
def _guard_lambda_names():
    from hypothesis.internal import lambda_sources

    describe = lambda_sources._lambda_description

    def guarded(f, *args, **kwargs):
        try:
            return describe(f, *args, **kwargs)
        except SystemError:
            return "lambda: <unknown>"

    lambda_sources._lambda_description = guarded


_guard_lambda_names()


# deleteResponse: a response id of `[operations] parameters` would replace the one a link
# gives in the stateful phase too, and once deleted, the prepared response is not found
# (a delete after a create would get 404). So the prepared ST_RESPONSE_DELETE goes only
# where the generator made up a valid id; the stateful phase deletes the responses it
# created. The responses the other operations are fuzzed with, which the stateful phase
# learns from their answers, are never deleted.
def _delete_prepared_response(case):
    meta = case.meta
    made_up = (
        meta is not None
        and meta.phase.name != TestPhase.STATEFUL
        and not meta.is_negative_at(ParameterLocation.PATH)
    )
    kept = case.path_parameters.get("id") in (
        os.environ["ST_RESPONSE"],
        os.environ["ST_RESPONSE_CANCEL"],
    )
    if made_up or kept:
        case.path_parameters["id"] = os.environ["ST_RESPONSE_DELETE"]


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.label == "DELETE /v1/responses/{id}":
        _delete_prepared_response(case)
    elif case.operation.label == "POST /v1/responses":
        _fresh_idempotency_key(kwargs)


# An Idempotency-Key the generator drew before attaches a create to the response it
# started, and that one may have been deleted since (the stateful phase deletes what it
# creates): the "created" response then reads 404. Each create gets a key of its own, of
# the same form, so a create is always a new response. Only the request sent changes (the
# case itself stays as drawn, so it is judged as drawn).
def _fresh_idempotency_key(kwargs):
    headers = kwargs.get("headers") or {}
    for name in list(headers):
        if name.lower() == "idempotency-key":
            headers[name] = uuid.uuid4().hex
