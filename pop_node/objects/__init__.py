"""Durable Objects on a PoP: storage, instances with their gates, commits, routing."""
