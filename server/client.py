"""`python -m server.client` keeps working: the client lives in `client/cli.py` (the client side stands
apart from the server's runtime)."""
from client.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
