"""Uploaded (and example) inputs of the web app: folders, decoding, previews, and the
overall cap on what is stored.

Each input lives in ``ROOT/inputs/<random id>/`` as ``upload.bin`` (decoded by content)
plus its previews. All stored uploads together are bounded (``max_stored_files`` and
``max_stored_mb``): a new upload is refused with 429 (too many files) or 507 (no room)
until old ones expire; bytes are counted as they arrive, before they are written.
"""
from __future__ import annotations

import secrets
import shutil
import threading
import time
from pathlib import Path

from pulse_sr.web.records import InputRecord, WebError, WebSettings, user_text

UPLOAD = "upload.bin"


class InputStore:
    """The inputs of one server, under ``root/inputs``; ``lock`` is shared with the jobs."""

    def __init__(self, root: Path, settings: WebSettings, lock: threading.Condition) -> None:
        self.dir = root / "inputs"
        self.dir.mkdir()
        self.settings = settings
        self.lock = lock
        self.inputs: dict[str, InputRecord] = {}
        self._pending = 0  # folders made, not yet registered or discarded
        self._bytes = 0  # bytes of stored and pending uploads
        #: generator name -> output side, for each face's face_gain verdict (set by the jobs)
        self.resolutions: dict[str, int] = {}

    # -- the cap ---------------------------------------------------------------------------
    def open_slot(self) -> tuple[str, Path]:
        """A new input folder, or 429 when ``max_stored_files`` uploads are stored already.
        Every slot ends in :meth:`register` or :meth:`discard`."""
        s = self.settings
        with self.lock:
            if len(self.inputs) + self._pending >= s.max_stored_files:
                raise WebError(429, f"this server already keeps {s.max_stored_files} uploads; "
                                    "try again once older ones expire")
            self._pending += 1
        input_id = secrets.token_hex(16)
        folder = self.dir / input_id
        try:
            folder.mkdir()
        except OSError:
            with self.lock:
                self._pending -= 1
            raise
        return input_id, folder

    def charge(self, nbytes: int) -> None:
        """Count ``nbytes`` more of an upload in progress; 507 when they do not fit the cap
        (the caller then discards the slot with everything charged to it)."""
        cap = int(self.settings.max_stored_mb * 1024 * 1024)
        with self.lock:
            if self._bytes + nbytes > cap:
                raise WebError(507, f"this server's storage for uploads ({self.settings.max_stored_mb:g} MB) "
                                    "is full; try again once older ones expire")
            self._bytes += nbytes

    def discard(self, folder: Path, charged: int) -> None:
        """Give up an unregistered slot: remove its folder, release its bytes."""
        shutil.rmtree(folder, ignore_errors=True)
        with self.lock:
            self._pending -= 1
            self._bytes -= charged

    def forget(self, rec: InputRecord) -> None:
        """Drop a registered input (caller holds ``lock``; the folder is removed after)."""
        self.inputs.pop(rec.id, None)
        self._bytes -= rec.size

    def stored(self) -> tuple[int, int]:
        """``(files, bytes)`` stored or arriving now."""
        with self.lock:
            return len(self.inputs) + self._pending, self._bytes

    # -- decoding --------------------------------------------------------------------------
    def register(self, input_id: str, folder: Path, name: str, size: int) -> InputRecord:
        """Decode ``folder/upload.bin`` (content sniffed by Pillow), classify, write previews.
        Refusals: 415 when the bytes are no image format we read, 400 for other problems."""
        from PIL import Image as PILImage

        from pulse_sr.errors import PulseError
        from pulse_sr.io.images import save_png
        from pulse_sr.io.paste import photo_tensor
        from pulse_sr.web.images import identifiable
        from pulse_sr.web.messages import web_error
        from pulse_sr.web.photos import load_photo

        s = self.settings
        path = folder / UPLOAD
        try:
            rgb = load_photo(path, s.max_pixels)  # uint8: a quarter of a float copy
        except PulseError as e:
            raise web_error(e, upload=path, status=None if identifiable(path) else 415) from None
        h, w = int(rgb.shape[0]), int(rgb.shape[1])
        kind = "small" if max(h, w) <= s.small_max_side else "photo"
        rec = InputRecord(id=input_id, dir=folder, name=name, width=w, height=h, kind=kind,
                          touched=time.time(), size=size)
        if kind == "small":
            save_png(photo_tensor(rgb), folder / "preview.png")
        else:
            small = PILImage.fromarray(rgb)
            small.thumbnail((s.photo_max_side, s.photo_max_side), PILImage.Resampling.LANCZOS)
            small.save(folder / "preview.png")
            self._faces(rec, rgb, path)
        with self.lock:
            self._pending -= 1
            self.inputs[input_id] = rec
        return rec

    def _faces(self, rec: InputRecord, img: object, path: Path) -> None:
        """Detect the faces of a photo (when alignment is installed) and write their previews."""
        from pulse_sr.web import photos
        from pulse_sr.web.images import preview_image

        ok, why = photos.align_status()
        rec.align_available = ok
        if not ok:
            rec.message = (f"this is a {rec.width}x{rec.height} photo, not a tiny face, and {why}: "
                           "you can use the whole image (centre-crop and resize) or upload a small "
                           "face crop")
            return
        try:
            rec.faces = photos.detect_faces(img)
        except Exception as e:  # noqa: BLE001 - detection problems become a message
            rec.message = f"face detection failed: {user_text(str(e), path)}"
        for f in rec.faces:
            preview_image(f.crop, 256).save(rec.dir / f"face_{f.index}.png")
            f.gains = photos.face_gains(f, self.resolutions)
        if not rec.faces and not rec.message:
            rec.message = "no face found in this photo; you can still use the whole image (centre-crop and resize)"

    # -- look-ups --------------------------------------------------------------------------
    def get(self, input_id: str) -> InputRecord:
        rec = self.inputs.get(input_id)
        if rec is None:
            raise WebError(404, "unknown input (it may have expired): upload it again")
        return rec

    def file(self, input_id: str, name: str) -> Path:
        rec = self.get(input_id)
        allowed = {"preview.png"} | {f"face_{f.index}.png" for f in rec.faces}
        if name not in allowed:
            raise WebError(404, "no such file")
        return rec.dir / name
