"""Pacing quality in simulation: occupancy at a capped abandonment rate.

Runs a simulated calling day (scheduler.simulate) for each seat count, each
pacing policy and each seed, and prints one line per seat count and policy:

    seats=25 policy=predictive occupancy=0.871 abandonment=0.029 ...

then the occupancy ceiling (talk / (talk + wrap-up)) and, per seat count, the
ratio of predictive to progressive occupancy. Every model figure is a flag.
``hung_up_ringing`` is the share of dials the predictive pacer took back while
they rang (``--cancel-ringing-after-s``, default 15 s; ``--no-cancel`` never).

``--seat-oracle`` adds a bound: the predictive pacer shown when every busy
seat will be free again (as if talk times were known at connect), printed as
``policy=predictive_seat_oracle``. It reaches no more than the plain pacer.

``--checks`` then runs the pacer under other models (answer rate, talk time,
ring range, abandonment target; each a change from the flags' model), one line
per model with ``check=NAME`` in front and progressive's occupancy at the end,
so that holding the target is shown beyond the default figures. Two of them
take a source of randomness away: ``no_ring_spread`` (every answer after the
same ring) and ``all_answer`` (every dial answered live). Only the second
lifts occupancy: what holds it back is not knowing which dials will be
answered, which no dialer can know before the answer.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import time
from collections.abc import Sequence

from scheduler.pacing import PacingMode, PacingPolicy
from scheduler.simulate import SimConfig, SimResult, simulate

_MODES = (PacingMode.PROGRESSIVE, PacingMode.FIXED_RATIO, PacingMode.PREDICTIVE)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = SimConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seats", default="10,25,50", help="comma-separated seat counts")
    parser.add_argument("--answer-rate", type=float, default=defaults.answer_rate)
    parser.add_argument("--ring-min-s", type=float, default=defaults.ring_min_s)
    parser.add_argument("--ring-max-s", type=float, default=defaults.ring_max_s)
    parser.add_argument("--hold-min-s", type=float, default=defaults.hold_min_s)
    parser.add_argument("--hold-max-s", type=float, default=defaults.hold_max_s)
    parser.add_argument("--talk-mean-s", type=float, default=defaults.talk_mean_s)
    parser.add_argument("--wrap-s", type=float, default=defaults.wrap_s)
    parser.add_argument("--max-wait-s", type=float, default=defaults.max_wait_s)
    parser.add_argument("--hours", type=float, default=defaults.hours)
    parser.add_argument("--seeds", type=int, default=3, help="runs per seat count and policy")
    parser.add_argument("--target", type=float, default=defaults.target_abandon_rate)
    parser.add_argument("--ratio", type=float, default=PacingPolicy().ratio, help="fixed ratio")
    parser.add_argument(
        "--cancel-ringing-after-s",
        type=float,
        default=PacingPolicy().cancel_ringing_after_s,
        help="predictive: earliest hang-up of a ringing call the pacer judges too risky",
    )
    parser.add_argument(
        "--no-cancel", action="store_true", help="predictive never hangs up a ringing call"
    )
    parser.add_argument(
        "--seat-oracle", action="store_true", help="also run predictive with seat times revealed"
    )
    parser.add_argument("--checks", action="store_true", help="also run the other-model checks")
    parser.add_argument("--check-seats", type=int, default=25, help="seats in the checks")
    parser.add_argument("--check-hours", type=float, default=None, help="default: --hours")
    return parser.parse_args(argv)


# Other models the pacer must hold its target under: (name, changes to the model).
_CHECKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("answer_rate_0.15", {"answer_rate": 0.15}),
    ("answer_rate_0.5", {"answer_rate": 0.5}),
    ("talk_mean_60", {"talk_mean_s": 60.0}),
    ("talk_mean_300", {"talk_mean_s": 300.0}),
    ("ring_2_30", {"ring_min_s": 2.0, "ring_max_s": 30.0}),
    ("ring_8_12", {"ring_min_s": 8.0, "ring_max_s": 12.0}),
    ("no_wrap", {"wrap_s": 0.0}),
    ("target_0.01", {"target_abandon_rate": 0.01}),
    ("target_0.05", {"target_abandon_rate": 0.05}),
    ("no_ring_spread", {"ring_min_s": 12.0, "ring_max_s": 12.0}),
    ("all_answer", {"answer_rate": 1.0}),
)


def _runs(policy: PacingPolicy, config: SimConfig, seeds: int) -> list[SimResult]:
    return [simulate(policy, config, random.Random(seed)) for seed in range(seeds)]


def _policy(args: argparse.Namespace, mode: PacingMode) -> PacingPolicy:
    return PacingPolicy(
        mode=mode,
        ratio=args.ratio,
        max_wait_s=args.max_wait_s,
        cancel_ringing_after_s=None if args.no_cancel else args.cancel_ringing_after_s,
    )


def _checks(args: argparse.Namespace, base: SimConfig) -> None:
    hours = args.check_hours if args.check_hours is not None else args.hours
    base = dataclasses.replace(base, seats=args.check_seats, hours=hours)
    for name, changes in _CHECKS:
        config = dataclasses.replace(base, **changes)  # type: ignore[arg-type]
        progressive = _runs(PacingPolicy(mode=PacingMode.PROGRESSIVE), config, args.seeds)
        runs = _runs(_policy(args, PacingMode.PREDICTIVE), config, args.seeds)
        print(
            f"check={name} seats={config.seats} policy=predictive"
            f" occupancy={statistics.fmean(r.occupancy for r in runs):.3f}"
            f" abandonment={statistics.fmean(r.abandonment for r in runs):.3f}"
            f" worst_abandonment={max(r.abandonment for r in runs):.3f}"
            f" hung_up_ringing={statistics.fmean(r.cancelled_share for r in runs):.3f}"
            f" target={config.target_abandon_rate:.3f}"
            f" ceiling={config.occupancy_ceiling:.3f}"
            f" progressive_occupancy={statistics.fmean(r.occupancy for r in progressive):.3f}",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    seat_counts = [int(part) for part in args.seats.split(",") if part.strip()]
    started = time.perf_counter()
    worst_run = 0.0
    ratios: list[str] = []
    base = SimConfig(
        answer_rate=args.answer_rate,
        ring_min_s=args.ring_min_s,
        ring_max_s=args.ring_max_s,
        hold_min_s=args.hold_min_s,
        hold_max_s=args.hold_max_s,
        talk_mean_s=args.talk_mean_s,
        wrap_s=args.wrap_s,
        max_wait_s=args.max_wait_s,
        hours=args.hours,
        target_abandon_rate=args.target,
    )
    for seats in seat_counts:
        config = dataclasses.replace(base, seats=seats)
        occupancy_by_mode: dict[str, float] = {}
        runs_to_make = [(mode.value, mode, config) for mode in _MODES]
        if args.seat_oracle:
            oracle = dataclasses.replace(config, reveal_seat_times=True)
            runs_to_make.append(("predictive_seat_oracle", PacingMode.PREDICTIVE, oracle))
        for name, mode, run_config in runs_to_make:
            runs = _runs(_policy(args, mode), run_config, args.seeds)
            occupancy = statistics.fmean(r.occupancy for r in runs)
            occupancy_by_mode[name] = occupancy
            abandonment = statistics.fmean(r.abandonment for r in runs)
            worst = max(r.abandonment for r in runs)
            connects = statistics.fmean(r.connects_per_seat_hour for r in runs)
            dials = statistics.fmean(r.dials_per_seat_hour for r in runs)
            hung_up = statistics.fmean(r.cancelled_share for r in runs)
            print(
                f"seats={seats} policy={name} occupancy={occupancy:.3f}"
                f" abandonment={abandonment:.3f} connects_per_seat_hour={connects:.1f}"
                f" dials_per_seat_hour={dials:.1f} hung_up_ringing={hung_up:.3f}",
                flush=True,
            )
            if name == PacingMode.PREDICTIVE.value:
                worst_run = max(worst_run, worst)
        progressive = occupancy_by_mode[PacingMode.PROGRESSIVE.value]
        predictive = occupancy_by_mode[PacingMode.PREDICTIVE.value]
        ratio = predictive / progressive if progressive else 0.0
        ratios.append(f"seats={seats} predictive/progressive occupancy={ratio:.3f}")
    print(f"ceiling occupancy={base.occupancy_ceiling:.3f} (talk / (talk + wrap-up))")
    for line in ratios:
        print(line)
    print(f"predictive worst run abandonment={worst_run:.3f} (target {args.target:.3f})")
    if args.checks:
        _checks(args, base)
    print(f"elapsed_s={time.perf_counter() - started:.1f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
