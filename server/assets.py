"""Images a game scene declares (`GymScene(assets={name: path})`), found at start-up and served at `/assets/`."""

from __future__ import annotations

import hashlib
import mimetypes
from pathlib import Path

import tornado.web

from .experiment import Experiment, GymScene
from .runtime import RuntimeSetupError

IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/svg+xml")


class AssetError(RuntimeSetupError):
    """A declared asset is missing or not an image; the message names the scene and the file."""


def collect_assets(experiment: Experiment, experiment_file: Path | None) -> dict[tuple[str, str], Path]:
    """Every (scene id, asset name) and its file, resolved beside the experiment file and kept inside its folder."""
    found: dict[tuple[str, str], Path] = {}
    for scene in experiment.leaves():
        if not isinstance(scene, GymScene) or not scene.assets:
            continue
        if experiment_file is None:
            raise AssetError(
                f"scene {scene.scene_id!r} declares assets, but the experiment has no folder to find them in"
            )
        root = experiment_file.parent.resolve()
        for name, relative in scene.assets.items():
            path = (root / relative).resolve()
            if not path.is_relative_to(root):
                raise AssetError(f"scene {scene.scene_id!r}: asset {name!r} ({relative}) is outside {root}")
            if not path.is_file():
                raise AssetError(f"scene {scene.scene_id!r}: asset {name!r} not found: {path}")
            if mimetypes.guess_type(path.name)[0] not in IMAGE_TYPES:
                raise AssetError(
                    f"scene {scene.scene_id!r}: asset {name!r} ({path.name}) is not a PNG, JPEG, GIF, WebP or SVG image"
                )
            found[(scene.scene_id, name)] = path
    return found


class AssetFiles(tornado.web.RequestHandler):
    """`/assets/<scene>/<name>`: only what a scene declared; anything else is 404, never a path on disk."""

    def initialize(self, assets: dict[tuple[str, str], Path]) -> None:
        self.assets = assets

    def get(self, scene_id: str, name: str) -> None:
        path = self.assets.get((scene_id, name))
        if path is None:
            raise tornado.web.HTTPError(404, reason=f"no asset {name!r} in scene {scene_id!r}")
        data = path.read_bytes()
        self.set_header("Content-Type", mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        if self.check_etag_header():
            self.set_status(304)
            return
        self.finish(data)
