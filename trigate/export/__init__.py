"""The export path of finished requests: LiteLLM's logging callbacks (sinks)."""
