"""Media: RTP, codecs, jitter buffer, DTMF, recording, AMD. Imports nothing of ours."""
