"""The core: errors, settings, the evaluation lifecycle and logging. Imported by every
layer above it; imports nothing of ours outside itself."""
