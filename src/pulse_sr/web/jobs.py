"""Search jobs of the web app: a queue, worker threads, per-job temporary folders, cancel
and cleanup. No HTTP here (see :mod:`pulse_sr.web.app`); inputs live in
:class:`pulse_sr.web.inputs.InputStore`.

Every file lives under one server-made, marked root folder
(:func:`pulse_sr.web.workdir.make_work_root`): ``inputs/<id>/`` holds an upload (always
saved as ``upload.bin``, decoded by content) and its previews; ``jobs/<id>/result/``
holds what ``pulse-sr run`` would write (:func:`pulse_sr.io.results.write_result_files`)
plus ``spread.png`` and, for photos, ``photo.png`` and ``restored_KK.png``. Ids are
random; names handed to the client come from the server and are checked against a
per-job set before use. Folders are removed ``job_ttl`` seconds after their last use.
Search settings come from :func:`pulse_sr.front_end.build_settings`, as the CLI's do.
"""
from __future__ import annotations

import collections
import logging
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from pulse_sr.web.inputs import UPLOAD, InputStore
from pulse_sr.web.job_request import JobRequest, parse_job_request
from pulse_sr.web.records import (  # noqa: F401 - WebSettings, WebError re-exported for callers
    FINAL_STATES, InputRecord, JobCancelled, JobRecord, WebError, WebSettings, finite_or_none,
)

#: search input side for a face from a photo, as ``pulse-sr restore`` (nearest valid size)
DEFAULT_FACE_SIZE = 16
#: a whole photo (no face chosen) above this many pixels is shrunk (uint8, Pillow) before it
#: becomes a float tensor: 4096 x 4096, the largest the web app used to accept at all
WHOLE_PHOTO_PIXELS = 4096 * 4096
#: one line per job on the server's stderr (``pulse-sr serve`` attaches the handler)
log = logging.getLogger("pulse_sr.web")


class JobManager:
    """Owns the root folder, inputs, jobs, the queue, worker threads and the janitor."""

    def __init__(self, settings: WebSettings) -> None:
        from pulse_sr.web.generators import GeneratorCache, list_generators
        from pulse_sr.web.workdir import make_work_root

        self.settings = settings
        self.root = make_work_root(Path(settings.work_dir) if settings.work_dir else None)
        self._cond = threading.Condition()
        self.store = InputStore(self.root, settings, self._cond)
        (self.root / "jobs").mkdir()
        self.generators = GeneratorCache(list_generators(settings.generators), settings.device,
                                         settings.generators)
        self.store.resolutions = {n: int(e.resolution) for n, e in self.generators.entries.items()
                                  if e.resolution}
        self.jobs: dict[str, JobRecord] = {}
        self._queue: collections.deque[str] = collections.deque()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._janitor_wake = threading.Event()

    @property
    def inputs(self) -> dict[str, InputRecord]:
        return self.store.inputs

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker threads (several workers share the CPU cores) and the janitor."""
        workers = max(1, self.settings.workers)
        if workers > 1:
            import os

            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
        for k in range(workers):
            t = threading.Thread(target=self._worker, name=f"pulse-sr-worker-{k}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._janitor, name="pulse-sr-janitor", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel everything, stop the threads and remove the root folder."""
        with self._cond:
            self._stopping = True
            for job in self.jobs.values():
                job.cancel.set()
            self._cond.notify_all()
        self._janitor_wake.set()
        for t in self._threads:
            t.join(timeout)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- jobs ------------------------------------------------------------------------------
    def create_job(self, body: Any) -> JobRecord:
        """Check the request (a decoded JSON body), build the search target and queue the job."""
        req = parse_job_request(body, self.settings)
        rec = self.store.get(req.input_id)
        gname = self._generator_name(req.generator)
        settings = self._search_settings(req)
        target, notes, face = self._target(rec, req, gname)
        plan = self._plan(target, gname, settings.eps)
        target = plan.image
        gain = self._gain(face, req)
        if gain is not None and gain.reason:
            notes = [*notes, gain.reason]
        job = JobRecord(
            id=secrets.token_hex(16), dir=Path(), input_id=rec.id,
            params={"generator": gname, "n": req.n, "steps": settings.steps, "eps": settings.eps,
                    "seed": req.seed, "resize": req.resize, "center_crop": req.center_crop,
                    "face": req.face, "force": req.force,
                    "warning": gain.reason if gain is not None and gain.decision == "warn" else ""},
            target=target, notes=notes, face=face, settings=settings, plan=plan,
            input_info={"path": f"upload: {rec.name}", "original_size": [rec.width, rec.height],
                        "used_size": [int(target.shape[2]), int(target.shape[1])], "notes": notes,
                        **plan.describe()},
        )
        if face is not None:
            job.input_info["face"] = face.record()
            job.input_info["face_gain"] = gain.to_dict() if gain is not None else None
        self._enqueue(job, rec)
        log.info("job %s queued: %s, %s, %d candidates, %d steps (queue: %d)", job.id[:8],
                 rec.name[:60], gname, req.n, settings.steps, self.position(job))
        return job

    @staticmethod
    def _gain(face: Any, req: JobRequest) -> Any:
        """The face_gain verdict of a face from a photo (``None`` for other inputs); a face
        with nothing to gain is refused (409) unless the request says ``force``."""
        from pulse_sr.io.face_gain import judge_face

        if face is None:
            return None
        gain = judge_face(face, force=req.force)
        if not gain.restore:
            raise WebError(409, f"skipped: {gain.reason}. Choose “restore anyway” to restore it.")
        return gain

    def _generator_name(self, name: str | None) -> str:
        """The requested (or default) generator, checked to be offered and available."""
        entries = self.generators.entries
        gname = name or next((n for n, e in entries.items() if e.default), "")
        if gname not in entries:  # perhaps downloaded since start-up
            entries = self.generators.refresh()
        if gname not in entries:
            raise WebError(400, f"unknown generator {gname[:40]!r}; offered: {', '.join(entries)}")
        if not entries[gname].available:
            raise WebError(400, f"generator {gname} is not available: {entries[gname].reason}")
        return gname

    @staticmethod
    def _search_settings(req: JobRequest) -> Any:
        """The search settings, built as the CLI builds them from what the user gave."""
        from pulse_sr.errors import PulseError
        from pulse_sr.front_end import build_settings
        from pulse_sr.web.messages import web_error

        try:
            return build_settings(req.given)
        except PulseError as e:
            raise web_error(e) from None

    def _resolution(self, gname: str) -> int:
        """The generator's output side (loads zoo entries, whose side is not listed)."""
        from pulse_sr.errors import PulseError
        from pulse_sr.web.messages import web_error

        res = self.generators.entries[gname].resolution
        if res is not None:
            return int(res)
        try:
            return int(self.generators.get(gname)[0].resolution)
        except PulseError as e:
            raise web_error(e, generator=gname) from None
        except OSError as e:
            raise WebError(503, f"cannot load generator {gname}: {e.strerror or e}") from None

    def _target(self, rec: InputRecord, req: JobRequest, gname: str) -> tuple[Any, list[str], Any]:
        """``(target, notes, aligned face or None)`` for the request: an upload gives its
        :class:`~pulse_sr.input_plan.InputPlan` as the target, a photo's face ``[3, h, w]`` in [0, 1]."""
        from pulse_sr.errors import PulseError
        from pulse_sr.web.messages import web_error

        res = self._resolution(gname)
        path = rec.dir / UPLOAD
        try:
            if req.face is not None:
                return self._face_target(rec, req, gname, res)
            from pulse_sr.input_plan import plan_input
            from pulse_sr.io.images import load_input

            if rec.kind == "photo" and rec.width * rec.height > WHOLE_PHOTO_PIXELS:
                from pulse_sr.web.photos import shrunk_photo

                img, notes = shrunk_photo(path, self.settings.max_pixels, WHOLE_PHOTO_PIXELS)
                known, mode = None, None
            else:
                (img, known, mode), notes = load_input(path, max_pixels=self.settings.max_pixels), []
            plan = plan_input(img, res, eps=self._search_settings(req).eps, name="input", mode=mode, known=known,
                              resize=req.resize, center_crop=req.center_crop)
            plan.notes[:0] = notes
            return plan, plan.notes, None
        except PulseError as e:
            raise web_error(e, upload=path, generator=gname) from None

    def _plan(self, target: Any, gname: str, eps: float) -> Any:
        """The input plan (issue 13: what the input is, operator, noise threshold, mask) of a target
        ``[3, h, w]`` (an aligned face), or the plan ``_target`` already made for an upload."""
        from pulse_sr.input_plan import InputPlan, plan_input

        if isinstance(target, InputPlan):
            return target
        return plan_input(target, self._resolution(gname), eps=eps, name="face")

    def _face_target(self, rec: InputRecord, req: JobRequest, gname: str, res: int) -> tuple[Any, list[str], Any]:
        """The chosen face of a photo, FFHQ-aligned and downscaled to the requested size."""
        from pulse_sr.degradations.bicubic import valid_input_sizes
        from pulse_sr.io.images import nearest_size
        from pulse_sr.web import photos

        if req.face is None or not 0 <= req.face < len(rec.faces):
            raise WebError(400, "no such face in this photo")
        sizes = valid_input_sizes(res)
        size = req.size or nearest_size(DEFAULT_FACE_SIZE, sizes)
        if size not in sizes:
            raise WebError(400, f"face size must be one of {', '.join(map(str, sizes))} for {gname}")
        photo = photos.load_photo(rec.dir / UPLOAD, self.settings.max_pixels)
        face = photos.align_face(photo, rec.faces[req.face], gname, res)
        notes = [f"face {req.face} of the photo, FFHQ-aligned for {gname}, downscaled to {size}x{size}"]
        return face.low_res(int(size)), notes, face

    def _enqueue(self, job: JobRecord, rec: InputRecord) -> None:
        with self._cond:
            if self._stopping:
                raise WebError(503, "the server is shutting down")
            if len(self._queue) >= self.settings.max_queue:
                raise WebError(429, f"the queue is full ({len(self._queue)} jobs waiting); try again later")
            job.dir = self.root / "jobs" / job.id
            job.dir.mkdir()
            rec.touched = time.time()
            self.jobs[job.id] = job
            self._queue.append(job.id)
            self._cond.notify()

    def get_job(self, job_id: str) -> JobRecord:
        job = self.jobs.get(job_id)
        if job is None:
            raise WebError(404, "unknown job (it may have expired)")
        return job

    def position(self, job: JobRecord) -> int:
        """1-based place in the queue; 0 once it left the queue."""
        with self._cond:
            try:
                return self._queue.index(job.id) + 1
            except ValueError:
                return 0

    def cancel(self, job_id: str) -> JobRecord:
        job = self.get_job(job_id)
        with self._cond:
            if job.state == "queued":
                try:
                    self._queue.remove(job.id)
                except ValueError:
                    pass
                self._finish(job, "cancelled", "cancelled before it started")
            elif job.state == "running":
                job.cancel.set()
            self._cond.notify_all()
        return job

    def job_file(self, job_id: str, name: str) -> Path:
        job = self.get_job(job_id)
        if job.result is None or name not in job.files:
            raise WebError(404, "no such file")
        return job.dir / "result" / name

    def snapshot(self, job: JobRecord) -> dict[str, Any]:
        """Plain-data status of a job (no curve, no previews)."""
        position = self.position(job)  # lock order: the queue's lock, then the job's
        with job.lock:
            return {
                "job_id": job.id, "state": job.state, "position": position,
                "step": job.step, "total_steps": job.params["steps"], "params": job.params,
                "notes": job.notes, "l2": list(job.l2), "best_l2": list(job.best_l2),
                "converged": list(job.converged), "error": job.error, "result": job.result,
                "seconds": round((job.finished or time.time()) - job.started, 2) if job.started else 0.0,
            }

    # -- worker ----------------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self.jobs.get(self._queue.popleft())
                if job is None or job.state != "queued":
                    continue
                with job.lock:
                    job.state, job.started = "running", time.time()
                    job.version += 1
            log.info("job %s started (waited %.1f s)", job.id[:8], job.started - job.created)
            try:
                self._run(job)
            except JobCancelled:
                self._cancelled(job)
            except Exception as e:  # noqa: BLE001 - one line on the page
                self._finish(job, "failed", " ".join(str(e).split()) or type(e).__name__)

    def _finish(self, job: JobRecord, state: str, message: str = "") -> None:
        with job.lock:
            job.state, job.finished = state, time.time()
            if state != "done":
                job.error = message
            job.version += 1
            ran = job.finished - job.started if job.started else 0.0
        log.info("job %s finished: %s in %.1f s%s", job.id[:8], state, ran,
                 f" ({message})" if message and state != "done" else "")

    def _cancelled(self, job: JobRecord) -> None:
        """End a job cancelled while running: its candidates already within eps are written
        and offered as results (marked cancelled); the job ends ``cancelled`` either way."""
        from pulse_sr.web.results import within_eps

        kept = within_eps(job.last_info, job.target, float(job.params["eps"]))
        if not kept:
            self._finish(job, "cancelled", "cancelled; no candidate was within eps yet")
            return
        try:
            self._write(job, None, job.started_perf, kept=kept)
        except Exception as e:  # noqa: BLE001 - the job still ends cancelled
            self._finish(job, "cancelled", f"cancelled; keeping its results failed: {e}")
            return
        self._finish(job, "cancelled", f"cancelled; kept {len(kept)} candidate(s) already within eps")

    def _run(self, job: JobRecord) -> None:
        from pulse_sr.search.pulse import pulse_search

        p, s, settings = job.params, self.settings, job.settings
        gen, fit = self.generators.get(p["generator"])
        n = p["n"]
        with job.lock:
            job.l2, job.best_l2, job.converged = [None] * n, [None] * n, [False] * n
        started = job.started_perf = time.perf_counter()

        def callback(info: Any) -> None:
            job.last_info = info  # what a cancel keeps (its faces within eps)
            if job.cancel.is_set():
                raise JobCancelled()
            l2 = [finite_or_none(float(v)) for v in info.l2]
            show = info.hr is not None and (info.step % max(1, s.preview_every) == 0
                                            or info.step == 1 or not bool(info.active.any()))
            previews = self._previews(info.hr) if show else None
            with job.lock:
                job.step = info.step
                job.l2 = l2
                job.best_l2 = [finite_or_none(float(v)) for v in info.best_l2]
                job.converged = [bool(c) for c in info.converged]
                job.curve.append([info.step, l2])
                if previews is not None:
                    job.previews, job.preview_version = previews, job.preview_version + 1
                job.version += 1

        if job.cancel.is_set():
            raise JobCancelled()
        plan = job.plan
        result = pulse_search(gen, plan.target, n=n, seed=p["seed"], settings=settings,
                              device=s.device, gaussian_fit=fit, callback=callback,
                              callback_images=True, operator=plan.operator, mask=plan.mask,
                              threshold=plan.threshold)
        if job.cancel.is_set():
            raise JobCancelled()
        self._write(job, result, started)

    def _previews(self, hr: Any) -> list[str]:
        from pulse_sr.web.images import png_data_url, preview_image

        return [png_data_url(preview_image(img, self.settings.preview_max_side)) for img in hr]

    def _write(self, job: JobRecord, result: Any, started: float, kept: Any = None) -> None:
        """Write the result folder and set ``job.result``: from a finished search's
        ``result``, or (``result`` None) the ``kept`` candidates of a cancelled one."""
        from pulse_sr.io.files import staged_dir
        from pulse_sr.web.results import write_cancelled, write_restored

        p = job.params
        gen, _ = self.generators.get(p["generator"])
        with staged_dir(job.dir / "result") as tmp:
            settings = {**(result.settings if result is not None else job.settings).to_dict(),
                        "n": p["n"], "seed": p["seed"], "device": self.settings.device}
            if result is not None:
                from pulse_sr.io.results import write_result_files

                report = write_result_files(tmp, target=job.target, result=result, generator=gen,
                                            settings=settings, input_info=job.input_info,
                                            started=started, matched=job.plan.matched())
                hr, indices = result.hr, list(range(int(result.hr.shape[0])))
            else:
                report = write_cancelled(tmp, target=job.target, kept=kept, generator=gen, params=p,
                                         settings=settings, input_info=job.input_info, started=started)
                hr = __import__("torch").stack([c.hr for c in kept])
                indices = [c.index for c in kept]
            files, vmax, sp_mean = self._spread(tmp, hr)
            if (tmp / "target.png").exists():
                files.add("target.png")
            restored: dict[int, str] = {}
            rec = self.inputs.get(job.input_id)
            if job.face is not None and rec is not None:
                from pulse_sr.web.photos import load_photo

                photo = load_photo(rec.dir / UPLOAD, self.settings.max_pixels)
                restored = write_restored(tmp, photo=photo, face=job.face, hr=hr, indices=indices,
                                          generator=p["generator"])
                files |= {"photo.png", *restored.values()}
        self._set_result(job, gen, report, files, restored, vmax, sp_mean)
        if result is not None:
            self._finish(job, "done")

    @staticmethod
    def _spread(folder: Path, hr: Any) -> tuple[set[str], float, float]:
        from pulse_sr.web.images import heat_image, spread

        sp = spread(hr)
        vmax = float(sp.max())
        heat_image(sp, vmax).save(folder / "spread.png")
        return {"input.png", "report.json", "spread.png"}, vmax, float(sp.mean())

    def _set_result(self, job: JobRecord, gen: Any, report: dict[str, Any], files: set[str],
                    restored: dict[int, str], vmax: float, sp_mean: float) -> None:
        from pulse_sr.web.generators import BUILTIN

        p = job.params
        cands = []
        for c in report["candidates"]:
            files |= {c["files"]["hr"], c["files"]["lr"]}
            cands.append({**c, "hr": c["files"]["hr"], "lr": c["files"]["lr"],
                          "restored": restored.get(c["index"])})
        entry = self.generators.entries[p["generator"]]
        card = entry.model_card or BUILTIN.get(p["generator"], (0, None, ""))[1]
        best = report["best_index"]
        with job.lock:
            job.files = files
            job.result = {
                "input": "input.png", "candidates": cands, "spread": "spread.png",
                "detected": job.plan.summary(), "threshold": job.plan.threshold,
                "target": "target.png" if "target.png" in files else "input.png",
                "spread_max": round(vmax, 5), "spread_mean": round(sp_mean, 5),
                "photo": "photo.png" if restored else None, "face_box": self._face_box(job),
                "best_index": cands[best]["index"] if best is not None else None,
                "best_row": best, "cancelled": bool(report.get("cancelled")),
                "cancelled_note": report.get("cancelled_note", ""), "warning": p.get("warning", ""),
                "any_converged": report["any_converged"], "notice": report["notice"],
                "model_card": card, "card_text": entry.card_text,
                "generator": gen.describe(), "zip": f"/api/jobs/{job.id}/results.zip",
            }

    def _face_box(self, job: JobRecord) -> list[float] | None:
        """The detected face's box as fractions of the photo (for zooming the slider)."""
        rec = self.inputs.get(job.input_id)
        det = getattr(job.face, "detection", None)
        if rec is None or det is None:
            return None
        left, top, right, bottom = det.box
        return [left / rec.width, top / rec.height, right / rec.width, bottom / rec.height]

    def zip_bytes(self, job_id: str) -> bytes:
        """All result files of a finished job as one zip (in memory)."""
        import io
        import zipfile

        job = self.get_job(job_id)
        if job.result is None:
            raise WebError(409, "the job has no results yet")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name in sorted(job.files):
                z.write(job.dir / "result" / name, f"pulse-sr-{job.id[:8]}/{name}")
        return buf.getvalue()

    # -- cleanup ---------------------------------------------------------------------------
    def _janitor(self) -> None:
        interval = max(0.2, min(60.0, self.settings.job_ttl / 4))
        while not self._janitor_wake.wait(interval):
            self.cleanup()

    def cleanup(self, now: float | None = None) -> int:
        """Remove inputs and finished jobs unused for ``job_ttl`` seconds; returns how many."""
        now = time.time() if now is None else now
        ttl = self.settings.job_ttl
        gone: list[Path] = []
        with self._cond:
            busy_inputs = {j.input_id for j in self.jobs.values() if j.state not in FINAL_STATES}
            for jid, job in list(self.jobs.items()):
                if job.state in FINAL_STATES and job.finished is not None and now - job.finished > ttl:
                    del self.jobs[jid]
                    gone.append(job.dir)
            for iid, rec in list(self.inputs.items()):
                if iid not in busy_inputs and now - rec.touched > ttl:
                    self.store.forget(rec)
                    gone.append(rec.dir)
        for d in gone:
            shutil.rmtree(d, ignore_errors=True)
        return len(gone)
