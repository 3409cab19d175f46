"""The networks: the frozen open_clip encoder, stage 1's temporal head, the CrossTVR re-ranker
and its patch-token selection. Nothing here trains or reads tables."""
