"""ChatD: the client-facing front end that routes sealed envelopes it cannot read."""
