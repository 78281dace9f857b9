"""The dialer: SIP user agent, worker and shared plumbing."""
