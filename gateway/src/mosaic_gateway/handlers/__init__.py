"""What ends a route's chain: forwarding, aggregation, the gateway's own documents."""
