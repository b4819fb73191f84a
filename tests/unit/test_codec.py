"""The JSON a task's options are stored as: any options come back as they went in."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from broker.domain import NO_RETRY, TaskSpec
from broker.storage.codec import task_options_from_json, task_options_json
from tests.support.strategies import retry_policies

texts = st.text(max_size=40)  # any characters: quotes, controls, non-ASCII, surrogates
seconds = st.floats(min_value=0, max_value=1e9, allow_nan=False)
retries = retry_policies(texts)
specs = st.builds(
    TaskSpec,
    task_type=st.just("t"),
    retry=st.one_of(st.just(NO_RETRY), retries),
    not_before=seconds,
    start_timeout_s=seconds,
    execution_timeout_s=seconds,
    idempotency_key=texts,
    fairness_key=texts,
    trace_context=st.dictionaries(texts, texts, max_size=3),
    payload_content_type=texts,
    submitter=texts,
)


@given(specs)
def test_options_round_trip(spec: TaskSpec) -> None:
    text = task_options_json(spec)
    assert (text is None) == (not spec.has_options or spec == TaskSpec(task_type="t"))
    assert task_options_from_json(TaskSpec(task_type="t"), text) == spec


@given(specs)
def test_options_are_the_json_a_json_encoder_writes(spec: TaskSpec) -> None:
    text = task_options_json(spec)
    if text is None:
        return
    # Written by hand, it is still exactly what json.dumps writes for the same data.
    assert text == json.dumps(json.loads(text), separators=(",", ":"))


def test_a_task_with_only_a_trace_context() -> None:
    spec = TaskSpec(task_type="t", trace_context={"traceparent": '00-"x"-\u00e9'})
    assert task_options_json(spec) == '{"trace_context":{"traceparent":"00-\\"x\\"-\\u00e9"}}'
