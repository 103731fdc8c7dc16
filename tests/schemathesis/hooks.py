"""Schemathesis hooks for scripts/schemathesis (loaded through `hooks` in schemathesis.toml).

One hook: a guard against a flaky error of this machine's Python (below).
"""

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
