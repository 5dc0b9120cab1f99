"""schemathesis hooks for the contract tests (loaded through SCHEMATHESIS_HOOKS).

WHIP and WHEP take an SDP offer as `application/sdp`, which is text; schemathesis has no
serializer for that media type and would report the two operations as errors without sending
anything. Send it as it sends text/plain.
"""

import schemathesis

schemathesis.serializer.alias("application/sdp", "text/plain")
