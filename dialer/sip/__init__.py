"""Pure SIP protocol core (sans-IO)."""
