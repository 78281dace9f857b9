"""``dialer demo``: the whole stack against the sandbox carrier and the demo bot, shown live."""
