"""Logging of one ``medml`` command: to stderr at the chosen verbosity, and to a log file in the folder it writes.

stderr shows warnings (and the results on stdout); ``-v`` adds progress messages (downloads, stages, Lightning's
notes), ``-vv`` debug detail, ``-q`` only errors. ``train``, ``predict`` and ``evaluate`` also write every message of
medml, Lightning and Python warnings (debug detail with ``-vv``) to ``train.log`` / ``predict.log`` /
``evaluate.log`` in their folder. That file is only opened once the command has made its folder (a marker file
appears), so a refused command never creates one: until then the records wait in memory.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LIGHTNING = ("lightning.pytorch", "lightning.fabric", "lightning")


class FolderLog(logging.Handler):
    """A file handler that buffers until ``marker`` exists, then writes the buffer and every later record to
    ``path`` (appending, so a resumed run keeps its history)."""

    def __init__(self, path: Path, marker: Path, level: int = logging.INFO):
        super().__init__(level)
        self.path, self.marker = Path(path), Path(marker)
        self.buffer: list[logging.LogRecord] = []
        self.stream = None
        self.setFormatter(logging.Formatter(FORMAT))

    def _open(self) -> bool:
        if self.stream is None and self.marker.exists():
            try:
                self.stream = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held until close()
            except OSError:
                return False
            for record in self.buffer:
                self.stream.write(self.format(record) + "\n")
            self.buffer.clear()
        return self.stream is not None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._open():
                self.stream.write(self.format(record) + "\n")
                self.stream.flush()
            elif len(self.buffer) < 10000:
                self.buffer.append(record)
        except Exception:  # noqa: BLE001 - logging must never stop the command
            self.handleError(record)

    def close(self) -> None:
        self._open()  # a command that made its folder at the very end still gets its log
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        self.buffer.clear()
        super().close()


class _NotResults(logging.Filter):
    """The console shows results on stdout already (`medml.cli` records are for the log file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "medml.cli"


@contextlib.contextmanager
def command_logging(verbosity: int, target: tuple[Path, Path] | None, command: str) -> Iterator[None]:
    """Console and folder logging for one command; everything is restored afterwards (in-process callers)."""
    root, medml_logger = logging.getLogger(), logging.getLogger("medml")
    console = logging.StreamHandler()
    console.setLevel({-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(min(max(verbosity, -1), 2), 10))
    console.setFormatter(logging.Formatter("medml: %(message)s" if verbosity <= 1 else FORMAT))
    console.addFilter(_NotResults())
    detail = logging.DEBUG if verbosity > 1 else logging.INFO
    handlers: list[logging.Handler] = [console]
    if target is not None:
        handlers.append(FolderLog(*target, level=detail))
    saved_level = medml_logger.level
    medml_logger.setLevel(detail)
    for handler in handlers:
        root.addHandler(handler)
    # Lightning keeps its own stderr handler and does not propagate when it was imported before any handler
    # existed; its records reach the log file through a handler of ours on its logger.
    attached = []
    for name in _LIGHTNING:
        logger = logging.getLogger(name)
        if not logger.propagate:
            for handler in handlers[1:]:
                logger.addHandler(handler)
                attached.append((logger, handler))
    lightning_levels = {name: logging.getLogger(name).level for name in _LIGHTNING}
    if verbosity < 0:
        for name in _LIGHTNING:
            logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    logging.getLogger("medml.cli").info("%s", command)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for logger, handler in attached:
            logger.removeHandler(handler)
        for name, level in lightning_levels.items():
            logging.getLogger(name).setLevel(level)
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        medml_logger.setLevel(saved_level)
