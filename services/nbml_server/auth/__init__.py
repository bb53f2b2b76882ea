"""The auth service: accounts, tokens, API keys, request history."""
