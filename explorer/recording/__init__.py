"""Record a generate() call run in the user's own code as a stored run (see docs/models.md).

`RecordingStreamer`: a streamer for DiffusionGemma's `generate(streamer=...)`.
`record_dream_history`: a Dream `diffusion_generate(..., output_history=True)` output, stored after the fact.
"""

from explorer.recording.dream_history import record_dream_history
from explorer.recording.streamer import RecordingStreamer

__all__ = ["RecordingStreamer", "record_dream_history"]
