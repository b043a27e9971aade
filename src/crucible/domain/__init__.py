"""The domain: the request and record shapes the core needs (evaluations, sandboxes,
environments) and the rules resolving requested limits. Above the engine and the
store, below the services; the API re-exports these shapes."""
