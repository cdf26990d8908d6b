"""Expert scores: weight criteria (streamed from the checkpoint) and, later, statistics criteria."""
