"""The web pages' one template environment and their static files."""

from __future__ import annotations

from pathlib import Path

from fastapi.templating import Jinja2Templates

from replenish.constants import Capability
from replenish.web.filters import FILTERS

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(FILTERS)
# Pages show what the signed-in person's household role allows: `principal.can(Capability.ORDER)`.
templates.env.globals["Capability"] = Capability
