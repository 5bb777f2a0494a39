"""The QNeRF interval schedule ("zipper"): the T=20, tau=2 event list, one guidance per kept step, the
`until` cut-off, and the driver's cache/rewind (bit-exact) with a latent that changes every step."""

from __future__ import annotations

import pytest
import torch

from attn_processors.qnerf import Event, interval_events, run_events

GOLDEN_T20_TAU2 = (
    "plain 0, plain 1, cache 2, free 2, extract 3, fit 3, rewind 2, "
    + ", ".join(f"guided {i}, guided {i + 1}, cache {i + 2}, free {i + 2}, extract {i + 3}, fit {i + 3}, "
                f"rewind {i + 2}" for i in range(2, 18, 2))
    + ", guided 18, guided 19"
)


def _text(events) -> str:
    return ", ".join(f"{e.kind} {e.step}" for e in events)


def test_t20_tau2_events_match_the_golden_list():
    events = list(interval_events(20, 2))
    assert _text(events) == GOLDEN_T20_TAU2
    assert sum(e.kind == "fit" for e in events) == 9
    kept = [e.step for e in events if e.kind in ("plain", "guided")]
    assert kept == list(range(20))  # every step kept exactly once, so guided at most once
    assert [e.step for e in events if e.kind == "guided"] == list(range(2, 20))


def test_short_last_interval_and_until():
    want = ("plain 0, plain 1, cache 2, free 2, extract 3, fit 3, rewind 2, "
            "guided 2, guided 3, cache 4, extract 4, fit 4, rewind 4, guided 4")
    assert _text(interval_events(5, 2)) == want
    cut = list(interval_events(10, 2, until=4))
    assert [e.step for e in cut if e.kind == "fit"] == [3]  # the last extraction stays before step 4
    assert [(e.kind, e.step) for e in cut[-8:]] == [("guided", 2), ("guided", 3)] + [
        ("plain", s) for s in range(4, 10)]
    assert _text(interval_events(3, 5)) == "plain 0, plain 1, plain 2"


@pytest.mark.parametrize("steps, tau", [(0, 2), (4, 0)])
def test_bad_counts(steps, tau):
    with pytest.raises(ValueError, match="num_steps >= 1 and tau >= 1"):
        list(interval_events(steps, tau))


def test_rewind_restores_the_cached_latent_bit_exactly():
    seen: dict[tuple[str, int], torch.Tensor] = {}
    fits: list[int] = []

    def step(z: torch.Tensor, e: Event) -> torch.Tensor:
        seen[(e.kind, e.step)] = z.clone()
        bump = 0.5 if e.kind in ("free", "extract") else 0.0  # free steps drift differently
        return torch.sin(z * 1.3 + e.step) + bump

    events = list(interval_events(8, 2))
    z0 = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    out = run_events(z0.clone(), events, step, lambda e: fits.append(e.step))
    assert fits == [3, 5, 7]
    for s in (2, 4, 6):  # the guided step after each rewind starts from the cached latent
        assert torch.equal(seen[("guided", s)], seen[("free", s)])
    ref = z0.clone()
    for s in range(8):  # the kept trajectory is the plain chain of kept steps
        ref = torch.sin(ref * 1.3 + s)
    assert torch.equal(out, ref)


def test_rewind_without_cache_is_an_error():
    with pytest.raises(ValueError, match="rewind at step 2 before any cache"):
        run_events(torch.zeros(1), [Event("rewind", 2)], lambda z, e: z, lambda e: None)
