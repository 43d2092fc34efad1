"""`python -m server.loadtest` keeps working: the load generator lives in `client/loadtest.py`."""
from client.loadtest import main

if __name__ == "__main__":
    raise SystemExit(main())
