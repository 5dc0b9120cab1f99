"""schemathesis hooks for the contract tests (loaded through SCHEMATHESIS_HOOKS).

WHIP and WHEP take an SDP offer as `application/sdp`, which is text, and tus appends take
`application/offset+octet-stream`, which is bytes; schemathesis has no serializer for either
media type and would report those operations as errors without sending anything. Send them as
it sends text/plain and application/octet-stream.
"""

import schemathesis

schemathesis.serializer.alias("application/sdp", "text/plain")
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
