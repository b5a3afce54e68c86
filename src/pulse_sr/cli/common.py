"""Shared pieces of the ``pulse-sr`` subcommands: exit codes, argument types, messages."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from pulse_sr.io import IMAGE_EXTENSIONS
from pulse_sr.io.results import NOTICE, json_safe, version  # noqa: F401 - re-exported (torch-free)

DEBUG_ENV = "PULSE_SR_DEBUG"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_CONVERGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class UsageError(Exception):
    """Bad options, device or generator: one line, exit 2."""


#: how this process's command prints (set once per :func:`pulse_sr.cli.main` by :func:`configure`):
#: ``json``: one JSON object per input on stdout, every human line on stderr; ``verbose``:
#: per-step detail and timings on stderr
MODE: dict[str, bool] = {"json": False, "verbose": False, "recursive": False}


def configure(args: argparse.Namespace) -> None:
    """Set :data:`MODE` from ``--json`` / ``--verbose`` (absent: off)."""
    MODE["json"] = bool(getattr(args, "json", False))
    MODE["verbose"] = bool(getattr(args, "verbose", False))
    MODE["recursive"] = bool(getattr(args, "recursive", False))


def verbose(msg: str) -> None:
    """A ``--verbose`` line (stderr); nothing otherwise."""
    if MODE["verbose"]:
        err(msg)


# -- argument types ----------------------------------------------------------------------
def int_at_least(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def layer_list(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.replace(".", ",").split(",")]
    try:
        layers = tuple(int(p) for p in parts if p)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected layer numbers separated by commas or dots (\"\" for none), got {text!r}"
        ) from None
    if any(x < 0 for x in layers):
        raise argparse.ArgumentTypeError(f"layer numbers must be >= 0, got {text!r}")
    return layers


# -- inputs ------------------------------------------------------------------------------
@dataclass
class Job:
    """One input file and what happened to it (``reason``: why it was skipped)."""

    path: Path
    error: str | None = None
    status: str = "pending"  # done | skipped | failed
    converged: bool = False
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def collect_inputs(inputs: Sequence[str], *, recursive: bool = False) -> tuple[list[Job], list[tuple[str, str]]]:
    """Expand folders: the image files directly inside, sorted by name (``recursive``: and
    those of its subfolders, depth first, not following links to folders).

    Returns the jobs and the (input, problem) pairs of folders without images. Every entry of
    a folder that is not taken (hidden, another type, a subfolder without ``recursive``, a
    broken link) is a job already ``skipped``, with the reason, so the summary counts it.
    """
    jobs: list[Job] = []
    problems: list[tuple[str, str]] = []
    for text in inputs:
        p = Path(text)
        if not p.is_dir():
            jobs.append(Job(p))
            continue
        found = _scan(p, recursive, problems, text)
        if found is None:
            continue
        if not any(j.status == "pending" for j in found):
            problems.append((text, f"no image files ({' '.join(IMAGE_EXTENSIONS)}) in folder"))
        jobs.extend(found)
    return jobs, problems


def _scan(folder: Path, recursive: bool, problems: list[tuple[str, str]], text: str) -> list[Job] | None:
    """The jobs of one folder (``None`` when it cannot be listed: a problem is recorded)."""
    try:
        entries = sorted(folder.iterdir(), key=lambda c: c.name)
    except OSError as e:
        problems.append((text, f"cannot list folder ({e.strerror or e})"))
        return None
    found: list[Job] = []
    for c in entries:
        if recursive and c.is_dir() and not c.is_symlink() and not c.name.startswith("."):
            found.extend(_scan(c, recursive, problems, str(c)) or [])
            continue
        why = _not_taken(c)
        found.append(Job(c) if why is None else Job(c, status="skipped", reason=why))
    return found


def _not_taken(entry: Path) -> str | None:
    """Why a folder entry is not an input (``None``: it is one)."""
    if entry.name.startswith("."):
        return "hidden file"
    if entry.is_symlink() and not entry.exists():
        return "broken symbolic link"
    if entry.is_dir():
        return "a folder, not searched (--recursive descends into subfolders)"
    if entry.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not a supported image type: {entry.suffix or 'no extension'}"
    if not entry.is_file():
        return "not a regular file"
    return None


def resolve_device(text: str) -> str:
    """``auto`` -> the best available; an unavailable device is a UsageError."""
    import torch

    if text == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {text}: not a device (use cpu, auto, cuda, cuda:N or mps)") from None
    if dev.type == "cpu":
        return str(dev)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: CUDA is not available in this torch build/machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s)")
        return str(dev)
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError(f"--device {text}: Apple MPS is not available on this machine")
        return str(dev)
    raise UsageError(f"--device {text}: unsupported device type (use cpu, auto, cuda or mps)")


def printable(msg: str, encoding: str | None = None) -> str:
    """``msg`` as the stream can print it: a byte of a file name that is not UTF-8 (a lone
    surrogate after ``os.fsdecode``) shows as ``\\xff``; other characters the stream's encoding
    lacks as backslash escapes. Never raises."""
    text = msg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    enc = encoding or "utf-8"
    try:
        return text.encode(enc, "backslashreplace").decode(enc)
    except LookupError:
        return text


def err(msg: str) -> None:
    print(printable(msg, getattr(sys.stderr, "encoding", None)), file=sys.stderr, flush=True)


def out(msg: str) -> None:
    print(printable(msg, getattr(sys.stdout, "encoding", None)), flush=True)


def announce_gaussian_fit(generator: Any, *, quiet: bool) -> Any:
    """Fit (or load) the mapping network's Gaussian up front, saying so when it takes a while.

    Returns ``(mean, std)``, or ``None`` for a generator without a mapping network.
    """
    if not generator.has_mapping:
        return None
    from pulse_sr.search.gaussian_fit import (
        DEFAULT_SAMPLES, DEFAULT_SEED, cached_gaussian_fit, gaussian_fit_cache_path,
    )

    if not quiet and not gaussian_fit_cache_path(generator.weights_hash, DEFAULT_SAMPLES, DEFAULT_SEED).exists():
        err(f"fitting the latent Gaussian of {generator.name} ({DEFAULT_SAMPLES:,} samples; once per weights "
             "file, then cached; about a minute for StyleGAN1 on a CPU) ...")
    return cached_gaussian_fit(generator)


def announce_compile(settings: Any, generator: Any, *, quiet: bool) -> None:
    """Say up front that the first search will sit compiling when ``--compile`` resolves to on."""
    from pulse_sr.search.pulse import resolve_settings

    if not quiet and resolve_settings(settings, generator).compile == "on":
        err("full steps run through torch.compile: the first search of a process waits for it (about "
            "100 s the first time, about 10 s once cached on disk); --compile off skips it")


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{text} ({e.filename})"
    return text


def strip_name(msg: str, path: Path) -> str:
    """Messages from io name the file; avoid printing it twice in ``error: <path>: ...``."""
    prefix = f"{path}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def render_error(e: BaseException) -> str:
    """One line for an error of the library, with the command line's hints: the flag that
    fixes a :class:`~pulse_sr.errors.SizeError` is named from its ``data``."""
    text = one_line(e)
    data = getattr(e, "data", None) or {}
    if getattr(e, "kind", None) == "size" and data.get("photo"):
        return text + "; to super-resolve its faces use pulse-sr restore (or run --align)"
    if getattr(e, "kind", None) == "size" and data.get("mosaic") and data.get("nearest") is not None:
        return text + f" (use --resize to resize the block grid to the nearest: {data['nearest']})"
    if getattr(e, "kind", None) == "size" and data.get("size"):
        w, h = data["size"]
        resolution = data.get("resolution")
        if resolution and min(w, h) > int(resolution):
            # larger than any face the generator draws: a photo, not a low-resolution face;
            # squashing it to a valid size gives nonsense
            return (text.removesuffix(f" (nearest: {data.get('nearest')})") + "; this looks like a photo: "
                    "use pulse-sr restore (or run --align) to find, restore and paste back its faces")
        if not data.get("square", True):
            text += f"; use --center-crop to crop the central {min(w, h)}x{min(w, h)}"
        elif data.get("nearest") is not None:
            text = text.removesuffix(f" (nearest: {data['nearest']})")
            text += f" (use --resize to resize to the nearest: {data['nearest']})"
    return text


# -- what several subcommands build from the same options -------------------------------------
def search_options(args: argparse.Namespace) -> dict[str, Any]:
    """The search settings the user gave on the command line: every ``SearchSettings`` field
    with an option of the same name that is not ``None`` (every such option defaults to
    ``None``, so an option left out is absent here)."""
    import dataclasses

    from pulse_sr.search.settings import SearchSettings  # torch-free module

    names = [f.name for f in dataclasses.fields(SearchSettings) if f.name != "given"]
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def settings_from_args(args: argparse.Namespace) -> Any:
    """The validated :class:`SearchSettings` of ``run``'s options, built by
    :func:`pulse_sr.front_end.build_settings` (as the web app builds them) from what the user
    gave; ``--faithful`` is its ``faithful``. Impossible settings are a UsageError."""
    from pulse_sr.errors import SettingsError
    from pulse_sr.front_end import build_settings

    try:
        return build_settings(search_options(args), faithful=bool(getattr(args, "faithful", False)))
    except SettingsError as e:
        raise UsageError(_settings_text(e)) from None


def _settings_text(e: Exception) -> str:
    data = getattr(e, "data", {})
    field_name = data.get("field")
    if data.get("problem") == "contradicts faithful" and field_name:
        text = f"--faithful contradicts --{field_name.replace('_', '-')} {data.get('value')}"
        return text + (" (not one of PULSE's schedules)" if field_name == "schedule" else "")
    text = one_line(e)
    return text if text.startswith("bad search settings") else f"bad search settings: {text}"


def generator_from_args(args: argparse.Namespace, device: str) -> Any:
    """``--generator`` / ``--weights`` (/ ``--download``) -> a loaded generator; problems are a UsageError."""
    from pulse_sr.api import load_generator
    from pulse_sr.errors import PulseError

    try:
        return load_generator(args.generator, weights=args.weights, device=device,
                              allow_download=bool(getattr(args, "download", False)),
                              progress=not getattr(args, "quiet", False))
    except PulseError as e:
        raise UsageError(one_line(e)) from None
    except OSError as e:
        raise UsageError(f"cannot load generator {args.generator!r}: {one_line(e)}") from None


# -- folder runs: every input to the end, a summary, resume ---------------------------------
def prepare_jobs(inputs: Sequence[str], outdir: Path, key: Any) -> tuple[list[Job], list[tuple[str, str]]]:
    """Inputs, folder problems and stem clashes (a clash fails the later input)."""
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"-o {outdir}: exists and is not a folder")
    jobs, problems = collect_inputs(inputs, recursive=MODE["recursive"])
    failures = list(problems)
    for where, problem in problems:
        err(f"error: {where}: {problem}")
        emit_json({"path": where, "status": "failed", "error": problem})
    seen: dict[str, Path] = {}
    for job in jobs:
        if job.status != "pending":
            continue
        k = output_name(job.path).casefold()
        if k in seen:
            job.status, job.error = "failed", (f"same output name {output_name(job.path)!r} as {seen[k]} (both would "
                                               f"write {key(job.path)}); rename one")
            err(f"error: {job.path}: {job.error}")
            failures.append((str(job.path), job.error))
            emit_json(job_record(job))
        else:
            seen[k] = job.path
    return jobs, failures


def output_name(path: Path) -> str:
    """The name of an input's results in OUTDIR: its stem, made safe (never ``.``, ``..``, hidden
    or empty: see :func:`pulse_sr.io.files.result_name`)."""
    from pulse_sr.io.files import result_name

    return result_name(path.stem)


def result_dir(outdir: Path, path: Path) -> Path:
    """``OUTDIR/<output_name>``: always a direct child of ``outdir``."""
    from pulse_sr.io.files import child_path

    return child_path(outdir, output_name(path))


def run_jobs(jobs: list[Job], failures: list[tuple[str, str]], one: Any,
             not_converged: str = "without a candidate within eps", hint: str = "") -> int:
    """Run ``one(job)`` for every pending job; any error fails that input only (a folder runs
    to the end). Every input's line goes to stderr (each failure once, where it happens);
    with ``--json`` each input's :func:`job_record` goes to stdout. Prints the summary (done,
    skipped; failures counted) and returns the exit code: 0, 1 some input failed, 3 some input
    done or skipped as done ``not_converged`` (then ``hint``, what to try next, is printed)."""
    for job in jobs:
        if job.status != "pending":
            if job.status == "skipped":
                emit_json(job_record(job))
            continue
        _run_job(job, one)
        if job.status == "failed":
            err(f"error: {job.path}: {job.error}")
            failures.append((str(job.path), job.error or "failed"))
        emit_json(job_record(job))
    done = [j for j in jobs if j.status == "done"]
    skipped = [j for j in jobs if j.status == "skipped"]
    not_conv = [j for j in done if not j.converged]
    old_not_conv = [j for j in skipped if j.extra.get("done") and not j.converged]
    line = f"summary: {len(done)} done, {len(skipped)} skipped, {len(failures)} failed"
    notes = ([f"{len(not_conv)} done {not_converged}"] if not_conv else []) + (
        [f"{len(old_not_conv)} skipped as done earlier {not_converged}"] if old_not_conv else [])
    if notes:
        line += f" ({'; '.join(notes)})"
    say = err if MODE["json"] else out
    say(line)
    for j in done:
        say(f"  done: {j.path}" + ("" if j.converged else f" ({not_converged})"))
    for j in skipped:
        say(f"  skipped: {j.path} ({j.reason or 'already done'})")
    if failures:
        return EXIT_FAILED
    if not_conv or old_not_conv:
        if hint:
            err(hint)
        return EXIT_NOT_CONVERGED
    return EXIT_OK


def not_converged_hint(args: argparse.Namespace) -> str:
    """What to try when no candidate came within eps (exit 3), naming only the options this
    command has: another ``--degradation``, a higher ``--noise-sigma`` or ``--eps``, more ``--steps``."""
    tries = []
    if hasattr(args, "degradation"):
        tries.append("a different --degradation (the input may not be a bicubic downscale)")
    if hasattr(args, "noise_sigma"):
        tries.append("a higher --noise-sigma (noisy or compressed input)")
    if hasattr(args, "eps"):
        tries.append("a higher --eps" + (f" (now {args.eps:g})" if getattr(args, "eps", None) else ""))
    if hasattr(args, "steps"):
        tries.append("more --steps" + (f" (now {args.steps})" if getattr(args, "steps", None) else ""))
    if not tries:
        return ""
    return "no candidate within eps: try " + ", ".join(tries[:-1]) + (" or " if len(tries) > 1 else "") + tries[-1]


def job_record(job: Job) -> dict[str, Any]:
    """One input's outcome as plain data (a ``--json`` line): path, status, best L2, converged,
    output folder, and the error or skip reason."""
    import os as _os

    rec: dict[str, Any] = {"path": _os.fsdecode(job.path), "status": job.status,
                           "best_l2": job.extra.get("best_l2"),
                           "converged": bool(job.converged) if job.status != "failed" else False,
                           "output": job.extra.get("output")}
    if job.error:
        rec["error"] = job.error
    if job.reason:
        rec["reason"] = job.reason
    for key in ("faces",):
        if key in job.extra:
            rec[key] = job.extra[key]
    return rec


def emit_json(rec: dict[str, Any]) -> None:
    """Print ``rec`` as one JSON line on stdout when ``--json`` is on."""
    if MODE["json"]:
        import json

        print(json.dumps(json_safe(rec), ensure_ascii=True), flush=True)


def _run_job(job: Job, one: Any) -> None:
    """``one(job)``; an error fails this job (one line in ``job.error``), never the run."""
    from pulse_sr.errors import PulseError

    try:
        one(job)
    except (PulseError, OSError) as e:
        job.status, job.error = "failed", strip_name(render_error(e), job.path)
    except Exception as e:  # noqa: BLE001 - one bad photo must not stop a folder
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        job.status, job.error = "failed", f"unexpected {type(e).__name__}: {one_line(e)}" + (
            "" if os.environ.get(DEBUG_ENV) else f" (run with {DEBUG_ENV}=1 for a traceback)")


def already_done(job: Job, final: Path, *, overwrite: bool, converged_key: str = "any_converged") -> bool:
    """Resume rule: ``final/report.json`` (written last) marks a finished input, which is skipped
    unless ``overwrite``; whether it converged is read from the report's ``converged_key`` (an
    unreadable report counts as not converged). A folder without it is not ours to replace
    silently."""
    import json

    from pulse_sr.errors import PulseError

    report = final / "report.json"
    if report.exists() and not overwrite:
        try:
            converged = json.loads(report.read_text(encoding="utf-8")).get(converged_key) is True
        except (OSError, ValueError, AttributeError):
            converged = False
        job.status, job.converged, job.extra["done"] = "skipped", converged, True
        job.reason = "already done" + ("" if converged else "; no candidate within eps")
        job.extra["output"] = str(final)
        err(f"{job.path}: skipped (exists; use --overwrite)")
        return True
    if (final.exists() or final.is_symlink()) and not overwrite:
        raise PulseError(f"{final} exists but holds no report.json; use --overwrite to replace it")
    return False


@contextlib.contextmanager
def claimed(job: Job, final: Path) -> Iterator[bool]:
    """Hold ``final``'s lock (``.<name>.lock`` beside it) while the body runs; yields False, with
    ``job`` marked skipped and a line saying so, when another live process holds it."""
    from pulse_sr.io.files import try_lock, unlock

    holder = try_lock(final)
    if holder is not None:
        job.status = "skipped"
        job.reason = f"another pulse-sr run (pid {holder or 'unknown'}) is writing {final}"
        err(f"{job.path}: skipped ({job.reason})")
        yield False
        return
    try:
        yield True
    finally:
        unlock(final)
