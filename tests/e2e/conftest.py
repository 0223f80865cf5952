"""The end-to-end tests' running system is the `system` fixture of tests/conftest.py: one
`mosaic up` per session, shared with the contract fuzzing in tests/contract."""
