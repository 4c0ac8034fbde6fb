"""Guards: PII detection and redaction (and, later, prompt-injection and output filters)."""
