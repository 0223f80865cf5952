"""Talking to backends: connections and pools, balancing, health, breakers, discovery, fetches."""
