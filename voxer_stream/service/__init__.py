"""The service: accounts, sessions, threads and the authorization rule."""
