"""The tests' API keys. Importing this turns auth on for every server a test starts.

Every server (in process, or ``crucible serve``, which inherits the environment)
makes sure ADMIN_KEY exists as an admin key, and every client (``Client``, the CLI)
sends it unless a test says otherwise.
"""

from __future__ import annotations

import os

ADMIN_KEY = "crk_test-admin-key-0123456789abcdefghijklmnopqrstuv"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}

os.environ["CRUCIBLE_BOOTSTRAP_ADMIN_KEY"] = ADMIN_KEY
os.environ["CRUCIBLE_API_KEY"] = ADMIN_KEY
