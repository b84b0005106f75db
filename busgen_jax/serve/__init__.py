"""`busgen serve`: a local web page over a generator (see `server` for the API)."""
