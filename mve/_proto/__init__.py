"""Generated gRPC stubs (built from protos/ by setup.py; see the .gitignore)."""
