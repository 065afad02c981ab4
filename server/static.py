"""Files served as they are on disk, with the refusals every static route shares."""

from __future__ import annotations

import tornado.web


class StaticFiles(tornado.web.StaticFileHandler):
    """Tornado's static files, answering a NUL in the path (`%00`) with 400 rather than an exception's 500."""

    def prepare(self) -> None:
        if any("\x00" in str(arg) for arg in self.path_args):
            raise tornado.web.HTTPError(400, reason="Bad Request: a NUL byte in the path")
