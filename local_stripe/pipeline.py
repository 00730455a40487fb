"""The pipeline every Stripe call runs through, in order (Stripe's):

1. authentication: a secret key (``sk_...``) or, for the v2 stream, a session token;
2. the idempotency key, if sent with a POST: replay the stored answer (with
   ``Idempotent-Replayed: true``), refuse a key reused with other parameters (400
   ``idempotency_error``) or one whose first request is still running (409), else run
   and maybe store the answer (``_idempotent``);
3. an injected failure, if one is due (``faults.py``), which counts as the endpoint
   failing;
4. the endpoint, which may hold (customer, event_name) claims (``customer_calls``) and
   which marks where its parameter checks end and its work begins (``executing``);
5. the injected latency, taken once per call (inside the claims when there are some).

Idempotency keys are scoped per account (the ``Stripe-Account`` header, else the
account itself) and stored answers expire 24 h after they were stored, by the server's
clock. What is stored follows Stripe's rules: v1 stores the first answer once the
endpoint began (an injected 5xx included), never an authentication failure, a 429, or a
refusal of the parameters before execution; v2 ("retries don't repeat successful
operations; Stripe retries failed work to completion") stores successes only, so a
retry after a failure runs again.

Each call is logged with its answer's status (``Store.calls``), so a test can count what a
client asked for, failed calls included.

Errors raised as ``StripeError`` anywhere become Stripe's JSON error answer.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Response, current_app, g, jsonify, request

from local_stripe.account import LocalStripe
from local_stripe.wire import StripeError, api_key, decode_form, reject_unknown


def current_state() -> LocalStripe:
    return current_app.extensions["local_stripe"]


def answer(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def pause() -> None:
    """Take the injected latency, once per call, never while holding a lock."""
    if g.get("paused"):
        return
    g.paused = True
    seconds = current_state().faults.latency_seconds
    if seconds > 0:
        time.sleep(seconds)


MISSING_KEY = (
    "You did not provide an API key. You need to provide your API key in the Authorization header, "
    "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication "
    "for details, or we can help at https://support.stripe.com/."
)


def authenticate(kind: str) -> None:
    """``kind`` "secret": any ``sk_...`` key; "session": a live meter event session token."""
    token = api_key(request.headers.get("Authorization"))
    if token is None:
        raise StripeError(401, MISSING_KEY)
    if kind == "secret":
        if not (token.startswith("sk_") and len(token) > len("sk_")):
            masked = token[: token.rfind("_") + 1] + "*" * 4 + token[-4:]
            raise StripeError(401, f"Invalid API Key provided: {masked}")
    elif not current_state().store.session_valid(token):
        # Stripe answers unknown and expired tokens alike; the SDK maps this error type
        # to TemporarySessionExpiredError, the client's cue to open a new session.
        raise StripeError(
            401,
            "The temporary session token has expired. Create a new meter event session.",
            type="temporary_session_expired",
            code="billing_meter_event_session_expired",
        )


def request_params() -> dict[str, Any]:
    """This request's parameters: JSON for v2 POSTs, else form or query string, decoded."""
    if "params" not in g:
        if request.method == "POST" and request.path.startswith("/v2/"):
            raw = request.get_data(cache=True)
            try:
                params = json.loads(raw) if raw.strip() else {}
            except ValueError:
                raise StripeError(400, "Invalid JSON in the request body.") from None
            if not isinstance(params, dict):
                raise StripeError(400, "The request body must be a JSON object.")
        elif request.method == "POST":
            params = decode_form(request.form.items(multi=True))
        else:
            params = decode_form(request.args.items(multi=True))
        g.params = params
    return g.params


def stripe_api(
    auth: str, *, accepts: Iterable[str] | None = None
) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., Response]]:
    """Wrap a view that returns a Stripe object (a dict) in the Stripe call pipeline.

    With ``accepts``, the request's parameters are refused if any is not named there, as
    Stripe refuses an unknown parameter, and the view is given them as its first argument.
    """

    def decorate(view: Callable[..., dict[str, Any]]) -> Callable[..., Response]:
        if accepts is not None:
            view = _given_params(view, tuple(accepts))

        @functools.wraps(view)
        def endpoint(**kwargs: Any) -> Response:
            response = _run(view, kwargs, auth)
            current_state().store.log_call(request.method, request.path, response.status_code)
            return response

        return endpoint

    return decorate


def executing() -> None:
    """Called by an endpoint where its parameter checks end: an error from here on is the
    endpoint's answer, which a v1 idempotency key stores."""
    g.executing = True


def idempotency_key() -> str:
    """This request's Idempotency-Key as received; without one, a key like those the SDK
    generates (one per request), so every meter event knows the request that brought it."""
    if "idempotency_key" not in g:
        g.idempotency_key = request.headers.get("Idempotency-Key") or str(uuid.uuid4())
    return g.idempotency_key


def _take_failure() -> None:
    faults = current_state().faults
    failure = faults.take_failure()
    if failure is not None:
        if faults.current.store_injected_failures:
            executing()  # the endpoint "failed": Stripe stores a 500 like any answer
        raise failure


def _run(view: Callable[..., dict[str, Any]], kwargs: dict[str, Any], auth: str) -> Response:
    try:
        authenticate(auth)
        if request.method == "POST" and request.headers.get("Idempotency-Key"):
            return _idempotent(view, kwargs, request.headers["Idempotency-Key"])
        _take_failure()
        return answer(view(**kwargs))
    except StripeError as error:
        return answer(error.body(), error.status, error.headers)
    finally:
        pause()


def _given_params(view: Callable[..., dict[str, Any]], accepts: tuple[str, ...]) -> Callable[..., dict[str, Any]]:
    @functools.wraps(view)
    def with_params(**kwargs: Any) -> dict[str, Any]:
        params = request_params()
        reject_unknown(params, accepts)
        return view(params, **kwargs)

    return with_params


def _stored_error(error: StripeError) -> tuple[int, dict[str, Any], dict[str, str], str] | None:
    """The error answer a key stores: v1 only, once the endpoint began, never a 429."""
    if request.path.startswith("/v2/") or error.status == 429 or not g.get("executing"):
        return None
    headers = dict(error.headers)
    if "Stripe-Should-Retry" in headers:
        # A retry with this key would only replay the answer; Stripe says so.
        headers["Stripe-Should-Retry"] = error.headers["Stripe-Should-Retry"] = "false"
    return (error.status, error.body(), headers, g.request_id)


def _idempotent(view: Callable[..., dict[str, Any]], kwargs: dict[str, Any], key: str) -> Response:
    """Run the view once per idempotency key; replay its stored answer for a retry."""
    store = current_state().store
    scoped = (request.headers.get("Stripe-Account") or "", key)
    outcome, record = store.idempotency_begin(scoped, (request.method, request.path, request_params()))
    if outcome == "replay":
        assert record.answer is not None
        status, body, headers, original_request = record.answer
        return answer(body, status, {**headers, "Idempotent-Replayed": "true", "Original-Request": original_request})
    if outcome == "busy":
        raise StripeError(
            409,
            "There is currently another in-progress request using this Idempotent Key (that probably means "
            f"you submitted twice, and the other request is still going through): {key}. Please try again later.",
            type="idempotency_error",
            code="idempotency_key_in_use",
            headers={"Stripe-Should-Retry": "true"},
        )
    if outcome == "mismatch":
        raise StripeError(
            400,
            "Keys for idempotent requests can only be used with the same parameters they were first used with. "
            f"Try using a key other than '{key}' if you meant to execute a different request.",
            type="idempotency_error",
        )
    stored = None  # stays None (the key is forgotten) unless the answer is one to keep
    try:
        _take_failure()
        body = view(**kwargs)
        stored = (200, body, {}, g.request_id)
        return answer(body)
    except StripeError as error:
        stored = _stored_error(error)
        raise
    finally:
        store.idempotency_finish(scoped, record, stored)


@contextlib.contextmanager
def customer_calls(keys: Iterable[tuple[str, str]]) -> Iterator[None]:
    """Hold (customer, event_name) claims for a v1 call when ``one_call_per_customer`` is on.

    The latency is taken inside, so that a slow call keeps its claims and an overlapping
    call for the same customer and meter is refused, as Stripe does.
    """
    state = current_state()
    keys = set(keys)
    if not state.faults.current.one_call_per_customer:
        pause()
        yield
        return
    if not state.store.claim(keys):
        customers = ", ".join(sorted({customer for customer, _ in keys}))
        raise StripeError(
            429,
            f"Too many concurrent requests for customer {customers} on this meter: only one call per customer "
            "per meter may be in progress at a time. Retry later.",
            code="rate_limit",
            headers={"Stripe-Should-Retry": "true"},
        )
    try:
        pause()
        yield
    finally:
        state.store.release(keys)
