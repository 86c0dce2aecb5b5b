"""Edge functions on a PoP: bundles, the runtime, bindings, cache, HTTP ingress."""
