"""The domain: principals and authorization, action streams, bus; no HTTP, no SQL."""
