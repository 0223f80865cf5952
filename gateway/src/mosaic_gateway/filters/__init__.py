"""A route's filters: API keys, JWT and roles, rate limits, header/query filtering, CORS, cache."""
