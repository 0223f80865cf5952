"""The NATS adapter (extra `mosaic-kit[nats]`): connecting, request-reply (`nats.micro`),
JetStream streams and publishing, durable and ephemeral consumers, the outbox relay, the JWKS and
revocation feeds over NATS, and the JetStream key-value cache.

`consumer` and `relay` also need the SQL adapter (they apply events and read the outbox in
PostgreSQL transactions); the other modules need only `nats-py`, which is what the gateway uses.
Names are imported from their module (`mosaic_kit.nats.rpc`, ...); this package re-exports nothing.
"""
