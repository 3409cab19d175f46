"""crosstvr: fine-grained text-to-video retrieval with frozen image encoders (CrossTVR)."""
