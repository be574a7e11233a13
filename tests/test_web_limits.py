"""The server's limits and its model gate, without a model or a web framework."""

from __future__ import annotations

import threading
import time

import pytest

from chatnt_core.errors import ChatNTError
from chatnt_core.web.limits import Deadline, LimitError, Limits, ModelGate


def test_each_limit_names_the_value_the_limit_and_the_fix() -> None:
    limits = Limits(max_sequence_length=100, max_upload_bytes=2_000_000, max_batch_records=3)
    limits.check_sequence("p.fna", 100)  # at the limit is fine
    with pytest.raises(LimitError, match=r"@p.fna is 101 letters long.* up to 100 letters") as e:
        limits.check_sequence("p.fna", 101)
    assert e.value.status == 413
    with pytest.raises(LimitError, match=r"big.fa is 2.5 MB; .* up to 2.0 MB: split the file"):
        limits.check_upload("big.fa", 2_500_000)
    with pytest.raises(LimitError, match="holds 4 records; .* up to 3 per batch"):
        limits.check_records("x.fa", 4)
    with pytest.raises(LimitError, match="names 9 sequences; .* up to 8 @tags") as e:
        limits.check_tags(9)
    assert e.value.status == 400
    with pytest.raises(LimitError, match="allows 1 to 128"):
        limits.check_new_tokens(129)
    with pytest.raises(ChatNTError, match="--max-tags must be positive"):
        Limits(max_tags=0)


def test_the_gate_lets_one_request_at_a_time_use_the_model() -> None:
    gate = ModelGate(Limits(max_queue=8, timeout=10))
    inside = 0
    most = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        with gate.hold():
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.01)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 1 and gate.waiting == 0


def test_a_full_queue_and_a_long_wait_are_refused_with_503() -> None:
    gate = ModelGate(Limits(max_queue=1, timeout=0.3))
    errors: list[LimitError] = []

    def wait_for_model() -> None:
        try:
            with gate.hold():
                pass
        except LimitError as exc:
            errors.append(exc)

    with gate.hold():  # the model is busy
        first = threading.Thread(target=wait_for_model)
        first.start()
        while gate.waiting < 1:
            time.sleep(0.01)
        busy = r"the server is busy \(1 requests are waiting"
        with pytest.raises(LimitError, match=busy) as e, gate.hold():
            pass
        assert e.value.status == 503
        first.join()
    assert len(errors) == 1 and errors[0].status == 503
    assert "waited 0.3 s for the model" in str(errors[0])
    with gate.hold():  # free again
        pass


def test_a_deadline_stops_work_that_runs_too_long() -> None:
    Deadline(time.monotonic() + 60, 60).check()
    with pytest.raises(LimitError, match=r"timeout of 5 s \(3 of 9 records answered\)") as e:
        Deadline(time.monotonic() - 1, 5).check("3 of 9 records answered")
    assert e.value.status == 504
