"""What the gateway tells about itself: metrics, the access log, tracing."""
