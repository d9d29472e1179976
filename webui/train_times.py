"""How long a run takes: the ETA while it trains (sample pauses and checkpoint saves counted) and the estimate
before Start (the form's steps at a pace this machine measured in an earlier job). Plain functions of jobs."""

from __future__ import annotations

from webui.jobs import Job


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _points(every: int, after: int, upto: int, last: bool = True) -> int:
    """How many multiples of `every` lie in (after, upto] (`last=False`: in (after, upto))."""
    if not every:
        return 0
    n = upto // every - after // every
    return n - (1 if not last and upto % every == 0 else 0)


def eta_text(job: Job) -> str:
    """The time left, sampling and checkpoint saving included: the steps at their measured pace between pauses,
    plus each sample pause and save still to come at the length the last one took. Before a pause is measured
    the sentence says what it leaves out."""
    events, times = list(job.events), list(job.event_times)
    n = min(len(events), len(times))
    timed = [(e, t) for e, t in zip(events[:n], times[:n]) if t == t]  # NaN: read back from the store
    step = job.latest("step")
    if step is None:
        return "ETA …"
    done, total, cfg = step.step, step.total, job.config
    gaps = [t1 - t0 for (e0, t0), (e1, t1) in zip(timed, timed[1:]) if e0.kind == e1.kind == "step"]
    step_s = sorted(gaps[-21:])[len(gaps[-21:]) // 2] if gaps else 1 / max(step.steps_per_s or 1e-9, 1e-9)
    pauses = {kind: [t1 - t0 for (_, t0), (e1, t1) in zip(timed, timed[1:]) if e1.kind == kind]
              for kind in ("sample", "checkpoint")}
    seconds, parts, missing = (total - done) * step_s, [f"steps {fmt_time((total - done) * step_s)}"], []
    for kind, count, what in (
            ("sample", _points(cfg.sample.sample_every_n_steps, done, total), "sample pauses"),
            ("checkpoint", _points(cfg.output.save_every_n_steps, done, total, last=False), "checkpoint saves")):
        if not count:
            continue
        if pauses[kind]:
            seconds += count * pauses[kind][-1]
            parts.append(f"{count} {what} × {fmt_time(pauses[kind][-1])}")
        else:
            missing.append(f"{count} {what}")
    now = ""
    if job.status == "running" and events and events[-1].kind == "step" and cfg.sample.sample_every_n_steps \
            and done % cfg.sample.sample_every_n_steps == 0:
        now = "making samples · "
    left_out = f"; not counting {' and '.join(missing)} (not measured yet)" if missing else ""
    return f"{now}ETA {fmt_time(seconds)} ({', '.join(parts)}{left_out})"


PACE_KEYS = ("model.base_model", "dataset.resolution", "train.batch_size", "network.rank")


def _pace_key(get) -> tuple:
    return tuple(str(int(float(v))) if isinstance(v, (int, float)) else str(v or "").strip()
                 for v in map(get, PACE_KEYS))


def start_estimate(state, form: dict, values: dict) -> str:
    """Before Start: the form's steps at the pace this machine measured, in the newest earlier job with the same
    base model, resolution, batch size and rank (its whole-run steps/s, sample pauses included)."""
    try:
        steps = int(float(values[form["train.max_steps"]] or 0))
        key = _pace_key(lambda name: values[form[name]])
    except (TypeError, ValueError):
        return ""
    if steps <= 0:
        return ""
    for job in state.jobs.listing():
        step = job.latest("step")
        if step is None or not step.steps_per_s or _pace_key(job.config.get) != key:
            continue
        return (f"Time estimate: about {fmt_time(steps / step.steps_per_s)} for {steps} steps: job {job.id} ran "
                f"{step.steps_per_s:.2f} steps/s on this machine with the same base model, resolution, batch size "
                "and rank (over its whole run, its sample pauses included); loading the model comes on top.")
    return ("Time estimate: none yet, as no earlier run on this machine with this base model, resolution, batch size "
            "and rank. Once a run starts, the progress line shows its pace and time left.")
