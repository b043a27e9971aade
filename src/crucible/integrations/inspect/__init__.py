"""The Inspect AI sandbox provider ``crucible`` (:mod:`.provider`, registered by the
``inspect_ai`` entry point) and its compose-file planner (:mod:`.compose`)."""
