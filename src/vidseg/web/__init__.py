"""The vidseg web app: ``vidseg serve`` opens videos in the browser, where objects are clicked,
tracked, corrected and exported; sessions are kept in SQLite and survive restarts.

Needs the ``web`` extra: ``pip install 'vidseg[web]'``.
"""

from vidseg.web.app import create_app, run_server

__all__ = ["create_app", "run_server"]
