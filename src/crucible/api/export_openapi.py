"""Regenerate the committed OpenAPI document: ``python -m crucible.api.export_openapi``.

A test checks that ``src/crucible/api/openapi.json`` equals what the app serves.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from crucible.api.app import create_app
from crucible.core.config import Settings

COMMITTED = Path(__file__).with_name("openapi.json")


def openapi_document() -> dict[str, Any]:
    # Building the schema needs no database: the lifespan does not run here.
    return create_app(Settings()).openapi()


def render() -> str:
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else COMMITTED
    target.write_text(render())
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
