"""The chart library's JavaScript, inlined in every report: Vega, Vega-Lite and Vega-Embed as one bundle.

The bundle comes from ``vl-convert-python`` (:func:`vl_convert.javascript_bundle`), which ships the three
libraries inside its wheel: nothing is downloaded. Building it takes 1-2 s, so it is cached once per
vl-convert version in ``$HTSR_CACHE_DIR/report/`` (default ``~/.cache/htsr/report/``); an unwritable cache only
costs the rebuild.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from htsr.errors import HtsrError

log = logging.getLogger(__name__)

#: Strings in the bundle that look like URLs but are never requested: XML namespaces (SVG output), the
#: ``$schema`` identifier of compiled specs, a link in a warning text and the "open in editor" action (reports
#: turn the action menu off). Tests check the report holds no other URL.
KNOWN_NON_REQUEST_URLS = (
    "http://www.w3.org/2000/svg",
    "http://www.w3.org/1999/xlink",
    "http://www.w3.org/2000/xmlns/",
    "https://vega.github.io/schema/vega/v6.json",
    "https://vega.github.io/editor/",
    "https://github.com/vega/vega-lite/issues/2415",
)

_memo: dict[str, str] = {}


class ReportError(HtsrError, ValueError):
    """A report cannot be made from this input (unknown or unsupported file, nothing to show)."""


def _cache_dir() -> Path:
    """``$HTSR_CACHE_DIR/report``, else ``$XDG_CACHE_HOME/htsr/report`` or ``~/.cache/htsr/report`` (the cache
    convention of :func:`htsr.ensembles.corruptions.cache_root`, without importing scipy)."""
    env = os.environ.get("HTSR_CACHE_DIR")
    if env:
        return Path(env) / "report"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "htsr" / "report"


def _vlc():
    try:
        import vl_convert
    except ImportError:
        raise ReportError("htsr report needs vl-convert-python for its inlined charts (pip install 'htsr[report]')"
                          ) from None
    return vl_convert


def bundle_version() -> str:
    """The vl-convert version that provides the bundle (a file-name-safe string)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("vl-convert-python")
    except PackageNotFoundError:
        _vlc()
        v = "unknown"
    return re.sub(r"[^A-Za-z0-9._-]", "_", v)


def vegalite_version() -> str:
    """The Vega-Lite version (``major.minor``) the report's specs were written for (altair's, when generated)."""
    from htsr.report._specs import VEGALITE_VERSION

    return VEGALITE_VERSION


def cache_path() -> Path:
    """Where the bundle of the installed vl-convert (and Vega-Lite version) is cached."""
    return _cache_dir() / f"vega-bundle-{bundle_version()}-vl{vegalite_version()}.js"


def javascript_bundle() -> str:
    """Vega + Vega-Lite + Vega-Embed as one script defining ``vegaEmbed``, ``vega`` and ``vegaLite`` (cached)."""
    v = bundle_version()
    if v in _memo:
        return _memo[v]
    path = cache_path()
    text = None
    try:
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            if "vegaEmbed" not in text:
                text = None
    except OSError:
        text = None
    if text is None:
        vlc, vl = _vlc(), vegalite_version()
        text = vlc.javascript_bundle(vl_version=vl) if vl in vlc.get_vegalite_versions() else vlc.javascript_bundle()
        try:
            from htsr.io import atomic_write

            atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        except OSError as e:
            log.debug("cannot cache the Vega bundle at %s: %s", path, e)
    _memo[v] = text
    return text


def warm_cache_in_background() -> object | None:
    """Start building the bundle in a child process when it is not cached yet (vl-convert holds the GIL, a thread
    would not overlap), so that it is ready when the report is written. Returns the process (or None)."""
    if bundle_version() in _memo or cache_path().is_file():
        return None
    import subprocess
    import sys

    try:
        return subprocess.Popen([sys.executable, "-c", "from htsr.report.bundle import javascript_bundle as b; b()"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    except OSError:
        return None
