"""HTTP/1.1 on the client side: the server protocol, the wire helpers, listeners, problems."""
