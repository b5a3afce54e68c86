"""``pulse-sr weights``: the checkpoint zoo (model cards), downloads and checks.

``list`` shows every card (resolution, backend, licence, training data, known
biases, whether it is downloaded); ``info NAME`` one card in full with URLs and
local files; ``download NAME...`` fetches (resumable, retried, size- and
hash-checked); ``verify NAME...`` re-hashes cached files; ``path NAME`` prints
what ``--weights`` takes. Exit codes: 0 done, 1 a download or check failed,
2 unknown name or bad usage.
"""
from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

from pulse_sr.cli.common import EXIT_FAILED, EXIT_OK, UsageError, err, json_safe, one_line, out

_WIDTH = 100


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "weights",
        help="list, download and verify known checkpoints (model cards)",
        description="Known face-GAN checkpoints with their model cards. Downloads go to "
        "$PULSE_SR_WEIGHTS (default: <user cache>/pulse-sr/weights, or $PULSE_SR_CACHE/weights); "
        "$PULSE_SR_ZOO_BASE_URL serves every file from a mirror instead.",
    )
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION")
    wsub.required = True

    ls = wsub.add_parser("list", help="every known checkpoint with a short model card")
    ls.add_argument("--json", action="store_true", help="print the cards as JSON")
    ls.set_defaults(func=cmd_list)

    info = wsub.add_parser("info", help="one checkpoint's full card, URLs and local files")
    info.add_argument("name", metavar="NAME")
    info.add_argument("--json", action="store_true", help="print the card as JSON")
    info.set_defaults(func=cmd_info)

    path = wsub.add_parser("path", help="print the local path of a downloaded checkpoint (for --weights)")
    path.add_argument("name", metavar="NAME")
    path.set_defaults(func=cmd_path)

    dl = wsub.add_parser("download", help="download checkpoints (resumes, retries, checks size and SHA-256)")
    dl.add_argument("names", nargs="+", metavar="NAME")
    dl.add_argument("--force", action="store_true", help="download again even if cached (discards a partial file)")
    dl.add_argument("--no-progress", action="store_true", help="no progress bar")
    dl.add_argument("--retries", type=int, default=5, metavar="N",
                    help="failed tries in a row before giving up (default 5; progress resets the count)")
    dl.add_argument("--timeout", type=float, default=60.0, metavar="S", help="network timeout in seconds (default 60)")
    dl.set_defaults(func=cmd_download)

    ver = wsub.add_parser("verify", help="re-check size and SHA-256 of downloaded checkpoints")
    ver.add_argument("names", nargs="*", metavar="NAME", help="default: every downloaded checkpoint")
    ver.set_defaults(func=cmd_verify)


def _entry(name: str) -> Any:
    from pulse_sr.errors import WeightsError
    from pulse_sr.weights.zoo import get_entry

    try:
        return get_entry(name)
    except WeightsError as e:
        raise UsageError(one_line(e)) from None


def _wrap(label: str, text: str) -> str:
    return textwrap.fill(text, width=_WIDTH, initial_indent=f"  {label}: ", subsequent_indent="      ",
                         break_on_hyphens=False, break_long_words=False)


def _size(entry: Any) -> str:
    from pulse_sr.weights.zoo import format_size

    sizes = [f.size for f in entry.files]
    if None in sizes:
        return "size not published (recorded at first download)"
    return format_size(sum(sizes))


def _hash_note(entry: Any) -> str:
    if all(f.sha256 for f in entry.files):
        return "published; every download and load is checked against it"
    return "not published; recorded at the first download and every later load is checked against it"


def _status(entry: Any) -> str:
    from pulse_sr.weights.zoo import is_cached, local_path

    return f"downloaded: {local_path(entry)}" if is_cached(entry) else "not downloaded"


def _card_json(entry: Any) -> dict[str, Any]:
    from pulse_sr.weights.zoo import file_url, is_cached, local_path

    d = entry.to_dict()
    for f, fd in zip(entry.files, d["files"]):
        fd["download_url"] = file_url(f)
    d["downloaded"] = is_cached(entry)
    d["path"] = str(local_path(entry))
    return d


def cmd_list(args: argparse.Namespace) -> int:
    """``pulse-sr weights list``: every card, shortly."""
    from pulse_sr.weights.zoo import ZOO, weights_root

    if args.json:
        out(json.dumps(json_safe([_card_json(e) for e in ZOO.values()]), indent=2))
        return EXIT_OK
    out(f"known checkpoints (cache: {weights_root()}); every face they produce is invented, not recovered\n")
    for entry in ZOO.values():
        out(f"{entry.name}  [{_status(entry)}]")
        out(f"  {entry.title}")
        out(f"  backend: {entry.backend}   resolution: {entry.resolution}x{entry.resolution}   "
            f"files: {', '.join(f.name for f in entry.files)}   {_size(entry)}")
        out(_wrap("licence", entry.licence))
        out(_wrap("training data", entry.training_data))
        out(_wrap("known biases", entry.biases))
        out(_wrap("SHA-256", _hash_note(entry)))
        out("")
    out("pulse-sr weights download NAME fetches one; pulse-sr weights info NAME shows URLs and notes.")
    out("The default generator dcgan-digiface ships inside the gan-face-generate wheel (no download); "
        "pulse-sr weights info dcgan-digiface shows its card.")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    """``pulse-sr weights info NAME``: the full card (``dcgan-digiface``: the default generator's)."""
    from pulse_sr.weights.download import read_manifest
    from pulse_sr.weights.zoo import DEFAULT_CARD, entry_dir, file_url, format_size

    if args.name == DEFAULT_CARD.name:
        return _default_card(args)
    entry = _entry(args.name)
    if args.json:
        out(json.dumps(json_safe(_card_json(entry)), indent=2))
        return EXIT_OK
    folder = entry_dir(entry)
    try:
        records = read_manifest(folder)["files"] if folder.is_dir() else {}
    except Exception as e:  # noqa: BLE001 - a broken manifest is reported, not fatal here
        records = {}
        err(f"warning: {one_line(e)}")
    out(f"{entry.name}: {entry.title}  [{_status(entry)}]")
    out(f"  backend: {entry.backend}   resolution: {entry.resolution}x{entry.resolution}   latent: {entry.latent}")
    for f in entry.files:
        rec = records.get(f.name, {})
        out(f"  file {f.name}")
        out(f"    url: {file_url(f)}")
        out(f"    size: {format_size(f.size if f.size is not None else rec.get('size'))}"
            + ("" if f.size is not None else " (not published)" if not rec else " (recorded)"))
        sha = f.sha256 or rec.get("sha256")
        how = "published" if f.sha256 else (f"recorded {rec.get('recorded', '')} ({rec.get('hash_source', '')})"
                                            if rec else "not published; recorded at first download")
        out(f"    sha256: {sha or '-'} [{how}]")
    out(_wrap("licence", entry.licence))
    out(_wrap("training data", entry.training_data))
    out(_wrap("known biases", entry.biases))
    out(_wrap("source", entry.source))
    if entry.notes:
        out(_wrap("notes", entry.notes))
    return EXIT_OK


def _default_card(args: argparse.Namespace) -> int:
    """The default generator's card: embedded in an installed wheel, nothing to download."""
    from pulse_sr.weights.zoo import DEFAULT_CARD as card

    try:
        from pulse_sr.generators.dcgan import find_digiface_weights

        status = f"installed: {find_digiface_weights()}"
    except Exception as e:  # noqa: BLE001 - the card is shown either way
        status = f"not installed ({one_line(e)})"
    if args.json:
        out(json.dumps(json_safe({**card.to_dict(), "installed": status.startswith("installed"), "status": status}),
                       indent=2))
        return EXIT_OK
    out(f"{card.name}: {card.title}  [{status}]")
    out(f"  backend: {card.backend}   resolution: {card.resolution}x{card.resolution}   latent: {card.latent}")
    out(_wrap("licence", card.licence))
    out(_wrap("training data", card.training_data))
    out(_wrap("what it means for real faces", card.biases))
    out(_wrap("source", card.source))
    out(_wrap("notes", card.notes))
    return EXIT_OK


def cmd_path(args: argparse.Namespace) -> int:
    """``pulse-sr weights path NAME``: the path ``--weights`` takes (1 if not downloaded)."""
    from pulse_sr.weights.zoo import is_cached, local_path

    entry = _entry(args.name)
    if not is_cached(entry):
        err(f"error: {entry.name} is not downloaded; run `pulse-sr weights download {entry.name}`")
        return EXIT_FAILED
    out(str(local_path(entry)))
    return EXIT_OK


def cmd_download(args: argparse.Namespace) -> int:
    """``pulse-sr weights download NAME...``: 0 all done, 1 some failed, 2 unknown name."""
    from pulse_sr.errors import WeightsError
    from pulse_sr.weights.download import download_entry

    if args.retries < 1:
        raise UsageError(f"--retries must be >= 1, got {args.retries}")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0, got {args.timeout}")
    entries = [_entry(n) for n in dict.fromkeys(args.names)]
    failed = 0
    for entry in entries:
        err(f"{entry.name}: licence: {entry.licence}")
        try:
            path = download_entry(entry, force=args.force, progress=not args.no_progress, attempts=args.retries,
                                  timeout=args.timeout, log=err)
        except WeightsError as e:
            err(f"error: {one_line(e)}")
            failed += 1
            continue
        out(f"{entry.name}: {path}")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    """``pulse-sr weights verify [NAME...]``: 0 all good, 1 some missing or damaged."""
    from pulse_sr.errors import WeightsError
    from pulse_sr.weights.download import verify_entry
    from pulse_sr.weights.zoo import ZOO, is_cached

    entries = [_entry(n) for n in dict.fromkeys(args.names)] if args.names else [e for e in ZOO.values() if is_cached(e)]
    if not entries:
        out("no checkpoint is downloaded")
        return EXIT_OK
    failed = 0
    for entry in entries:
        try:
            path = verify_entry(entry)
        except WeightsError as e:
            err(f"error: {one_line(e)}")
            failed += 1
            continue
        out(f"{entry.name}: ok ({path})")
    return EXIT_FAILED if failed else EXIT_OK
