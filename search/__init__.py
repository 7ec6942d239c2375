"""Search: CLIP embeddings, the vector index and queries."""
