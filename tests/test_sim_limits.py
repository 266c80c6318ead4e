"""The simulator's sliding rate windows, fault draws and header formats, on a fake clock."""

from __future__ import annotations

import random

import pytest

from batchroute.sim.config import FaultRates
from batchroute.sim.faults import FaultPicker
from batchroute.sim.limits import ModelLimiter
from batchroute.sim.wire import format_duration


def admitted(limiter: ModelLimiter, n: int, *, at: float, tokens: int = 1) -> int:
    return sum(limiter.admit(tokens, at) is None for _ in range(n))


def test_requests_window_slides_rather_than_resetting() -> None:
    limiter = ModelLimiter(rpm=3, tpm=None, window_s=60, per_second=False)
    for t in (0.0, 10.0, 20.0):
        assert limiter.admit(1, t) is None
    denial = limiter.admit(1, 30.0)
    assert denial is not None and denial.kind == "requests"
    assert denial.wait_s == pytest.approx(30.0)  # the request at t=0 leaves the window at t=60
    assert limiter.admit(1, 59.9) is not None
    assert limiter.admit(1, 60.0) is None
    assert limiter.admit(1, 60.1) is not None  # t=10 has not left yet


def test_a_denied_request_consumes_no_quota() -> None:
    limiter = ModelLimiter(rpm=2, tpm=None, window_s=60, per_second=False)
    assert admitted(limiter, 2, at=0.0) == 2
    assert admitted(limiter, 50, at=1.0) == 0
    assert limiter.headers(1.0)["x-ratelimit-remaining-requests"] == "0"
    assert admitted(limiter, 3, at=60.0) == 2  # only the two admitted ones expired


def test_a_shorter_window_scales_the_limit() -> None:
    limiter = ModelLimiter(rpm=60, tpm=None, window_s=10, per_second=False)
    assert admitted(limiter, 20, at=0.0) == 10
    assert admitted(limiter, 20, at=10.0) == 10


def test_tokens_window_frees_the_oldest_spend_first() -> None:
    limiter = ModelLimiter(rpm=None, tpm=1000, window_s=60, per_second=False)
    assert limiter.admit(600, 0.0) is None
    assert limiter.admit(300, 5.0) is None
    denial = limiter.admit(500, 10.0)
    assert denial is not None and denial.kind == "tokens"
    assert (denial.limit, denial.used, denial.requested) == (1000, 900, 500)
    assert denial.wait_s == pytest.approx(50.0)  # freeing the 600 from t=0 is enough
    assert limiter.admit(100, 10.0) is None


def test_a_request_larger_than_the_whole_token_limit_is_always_refused() -> None:
    limiter = ModelLimiter(rpm=None, tpm=1000, window_s=60, per_second=False)
    denial = limiter.admit(1001, 0.0)
    assert denial is not None and denial.kind == "tokens"


def test_per_second_window_quantises_the_limit() -> None:
    limiter = ModelLimiter(rpm=3000, tpm=None, window_s=60, per_second=True)
    assert admitted(limiter, 80, at=0.0) == 50
    denial = limiter.admit(1, 0.5)
    assert denial is not None and denial.wait_s == pytest.approx(0.5)
    assert admitted(limiter, 80, at=1.0) == 50
    assert limiter.headers(1.0)["x-ratelimit-remaining-requests"] == "2900"


def test_per_second_tokens_admit_one_oversized_request_into_an_empty_second() -> None:
    limiter = ModelLimiter(rpm=None, tpm=600, window_s=60, per_second=True)  # 10 tokens a second
    assert limiter.admit(50, 0.0) is None
    assert limiter.admit(1, 0.5) is not None
    assert limiter.admit(50, 1.0) is None


def test_headers_report_limit_remaining_and_reset() -> None:
    limiter = ModelLimiter(rpm=500, tpm=400_000, window_s=60, per_second=False)
    assert limiter.admit(1_100, 0.0) is None
    headers = limiter.headers(24.0)
    assert headers == {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "36s",
        "x-ratelimit-limit-tokens": "400000",
        "x-ratelimit-remaining-tokens": "398900",
        "x-ratelimit-reset-tokens": "36s",
    }
    assert "x-ratelimit-limit-tokens" not in ModelLimiter(
        rpm=5, tpm=None, window_s=60, per_second=False
    ).headers(0.0)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.12, "120ms"),
        (0.0004, "1ms"),
        (0.9999, "1s"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (59.9986, "59.999s"),
        (59.9994, "1m0s"),  # rounded up, never down
        (360.0, "6m0s"),
        (61.25, "1m1.25s"),
        (3725.0, "1h2m5s"),
    ],
)
def test_format_duration_writes_openai_style(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_fault_picker_draws_at_the_configured_rates() -> None:
    picker = FaultPicker(FaultRates(server_error=0.2, disconnect=0.1))
    rng = random.Random(1)
    draws = [picker.draw(rng, elapsed_s=0.0) for _ in range(10_000)]
    assert draws.count("server_error") == pytest.approx(2_000, abs=200)
    assert draws.count("disconnect") == pytest.approx(1_000, abs=150)
    assert draws.count(None) == pytest.approx(7_000, abs=250)


def test_fault_picker_without_faults_draws_nothing_from_the_generator() -> None:
    rng = random.Random(3)
    state = rng.getstate()
    assert FaultPicker(FaultRates()).draw(rng, elapsed_s=0.0) is None
    assert rng.getstate() == state


def test_fault_picker_rates_over_one_become_shares() -> None:
    picker = FaultPicker(FaultRates(server_error=1.0, unavailable=1.0))
    rng = random.Random(5)
    draws = [picker.draw(rng, elapsed_s=0.0) for _ in range(1_000)]
    assert None not in draws
    assert draws.count("server_error") == pytest.approx(500, abs=80)


def test_fault_schedule_is_a_window_of_server_time() -> None:
    picker = FaultPicker(FaultRates(rate_limit=1.0, active_from_s=5, active_until_s=15))
    rng = random.Random(0)
    assert picker.draw(rng, elapsed_s=4.9) is None
    assert picker.draw(rng, elapsed_s=5.0) == "rate_limit"
    assert picker.draw(rng, elapsed_s=14.9) == "rate_limit"
    assert picker.draw(rng, elapsed_s=15.0) is None
