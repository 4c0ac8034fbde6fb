"""Memory: conversations Trellis keeps for its callers (``trellis.session_id``)."""

from trellis.memory.sessions import GatewaySummarizer, SessionMemory, Summarizer

__all__ = ["SessionMemory", "Summarizer", "GatewaySummarizer"]
